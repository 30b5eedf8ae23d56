"""What every benchmark needs: a MongoDB, a fresh RabbitMQ vhost, and a section in results.md.

MongoDB is ``MONGODB_URL`` when set (a real server), else an ``emulators.mongo`` process; each run
gets a database of its own. RabbitMQ is the machine's node (``AMQP_URL``), in a throw-away vhost.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import _mgmt, vhost_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.md"


@dataclass(frozen=True)
class BenchInfra:
    mongodb_url: str
    amqp_url: str
    mongo_label: str


@contextlib.contextmanager
def bench_infra(db_prefix: str, *, writer_entries: int = 0) -> Iterator[BenchInfra]:
    """``writer_entries``: the database starts with that many applied trigger tools of other
    instances (bench/writer_seed.py), for costs against the size of otc-writer's collections."""
    mongo: subprocess.Popen[str] | None = None
    url = os.environ.get("MONGODB_URL")
    label = "MongoDB at MONGODB_URL"
    db_name = f"{db_prefix}_{uuid.uuid4().hex[:8]}"
    if not url:
        args = ["emulators.mongo", "--port", "0"]
        if writer_entries:
            args = ["bench.seeded_mongo", "--db", db_name, "--writer-entries", str(writer_entries)]
        mongo = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert mongo.stdout is not None
        url = mongo.stdout.readline().strip().removeprefix("MONGODB_URL=")
        label = "emulators.mongo (mongoeco)"
    parts = urllib.parse.urlsplit(url)
    db_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{db_name}", parts.query, ""))
    if writer_entries and mongo is None:
        _seed_over_the_wire(db_url, writer_entries)
    vhost = f"kotc-bench-{uuid.uuid4().hex[:8]}"
    _mgmt("PUT", f"vhosts/{vhost}")
    _mgmt("PUT", f"permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    try:
        yield BenchInfra(db_url, vhost_url(vhost), label)
    finally:
        _mgmt("DELETE", f"vhosts/{vhost}")
        if mongo is not None:
            mongo.terminate()
            mongo.wait(10)


def _seed_over_the_wire(url: str, entries: int) -> None:
    from pymongo import MongoClient

    from bench.writer_seed import seed_documents

    client: MongoClient[dict[str, object]] = MongoClient(url)
    try:
        db = client.get_default_database()
        for collection, docs in seed_documents(entries).items():
            db[collection].insert_many(docs)
    finally:
        client.close()


def append_results(
    title: str,
    command: str,
    infra: BenchInfra,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    note: str = "",
) -> None:
    """Append one dated section with a markdown table to ``bench/results.md``."""
    lines = [
        f"\n## {title} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n",
        f"`{command}` on {platform.machine()} with {os.cpu_count()} CPUs; MongoDB: {infra.mongo_label}; "
        "RabbitMQ: the local node (confirmed publishes).\n",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += [
        "",
        f"{note} Peak RSS of the benchmark process (the service runs in it): {rss_mib:.0f} MiB.".strip(),
    ]
    with RESULTS.open("a") as fh:
        fh.write("\n".join(lines) + "\n")

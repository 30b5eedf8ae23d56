"""One round of ``make chaos`` in the suite: the whole stack as processes, its own RabbitMQ node, the
short profile's poison round (malformed, wrong-schema, huge and unknown-type messages straight into
every queue) under a steady stream of changes (bench/chaos.py has the rules and the faults).

The row must keep the invariants (missing = 0, duplicated = 0, dead letters only for the poison
messages the harness published, converged), and the secret scrape of every log line, message body and
header, MongoDB document, /metrics and error body of the run must find none of the secrets. The other
rounds (OTC down, SIGKILL otc-writer, MongoDB and RabbitMQ kill -9) run in ``make chaos``, which holds
the same invariants (its exit code) and that an OTC outage costs no more writes than needed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


# Its own bound (the 600 s wait below), not the suite's 180 s per test: a timeout mid-run would leave
# its processes and its RabbitMQ node behind.
@pytest.mark.timeout(660)
async def test_a_chaos_round_of_poison_messages_keeps_every_invariant(tmp_path: Path) -> None:
    # Its default report is its own: the committed full-profile figures are never overwritten.
    out = ROOT / ".run" / "chaos-short.json"
    out.unlink(missing_ok=True)
    committed = (ROOT / "bench" / "chaos.json").read_bytes()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.chaos",
        "--profile",
        "short",
        "--faults",
        "poison",
        "--logs",
        str(tmp_path / "logs"),
        cwd=ROOT,
    )
    code = await asyncio.wait_for(proc.wait(), 600)
    assert (ROOT / "bench" / "chaos.json").read_bytes() == committed
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert code == 0, [(r["fault"], r["problems"]) for r in rows if not r["ok"]] or report["secret_scrape"]
    (poison,) = rows
    assert poison["fault"] == "poison messages in every queue #1"
    assert poison["missing"] == 0 and poison["duplicated"] == 0
    assert poison["dead_lettered"] == poison["poison_dead_lettered"]
    assert poison["converge_s"] is not None
    # malformed, wrong schema and huge in each of the three queues; an unknown type is ignored
    # by the event consumers (acked) and refused by the command consumer (dead-lettered).
    assert poison["poison_dead_lettered"] >= 9
    scrape = report["secret_scrape"]
    assert scrape["found"] == []
    assert all(scrape["scanned"][place] > 0 for place in ("logs", "messages", "mongodb", "metrics"))

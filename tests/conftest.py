"""Fixtures for real infrastructure: RabbitMQ (one fresh vhost per test) and MongoDB.

MongoDB: ``MONGODB_URL`` when set (a real server), otherwise one ``emulators.mongo`` process for
the session; every test gets its own database. RabbitMQ: ``AMQP_URL`` (default the machine's
node); every test gets its own virtual host, created and deleted through the management API, so
the contract queue names never collide between tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.rabbit_node import RabbitNode

ROOT = Path(__file__).resolve().parent.parent


def _replace_db(url: str, db: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def mongo_server_url() -> Iterator[str]:
    if os.environ.get("MONGODB_URL"):
        yield os.environ["MONGODB_URL"]
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.mongo", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("MONGODB_URL="):
        proc.kill()
        proc.stdout.close()
        raise RuntimeError(f"emulators.mongo did not start: {line!r}")
    try:
        yield line.removeprefix("MONGODB_URL=")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


@pytest.fixture
def mongodb_url(mongo_server_url: str) -> str:
    """A database of its own for this test."""
    return _replace_db(mongo_server_url, f"kotc_test_{uuid.uuid4().hex[:12]}")


AMQP_BASE = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MGMT_URL = os.environ.get("RABBITMQ_MGMT_URL", "http://127.0.0.1:15672")


def _mgmt(method: str, path: str, body: dict[str, object] | None = None) -> None:
    parts = urllib.parse.urlsplit(AMQP_BASE)
    user, password = parts.username or "guest", parts.password or "guest"
    req = urllib.request.Request(
        f"{MGMT_URL}/api/{path}",
        method=method,
        data=json.dumps(body or {}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(req, timeout=10):
        pass


def vhost_url(vhost: str) -> str:
    parts = urllib.parse.urlsplit(AMQP_BASE)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/" + urllib.parse.quote(vhost, safe=""), "", "")
    )


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh RabbitMQ virtual host for this test, deleted afterwards."""
    vhost = f"kotc-test-{uuid.uuid4().hex[:12]}"
    quoted = urllib.parse.quote(vhost, safe="")
    user = urllib.parse.urlsplit(AMQP_BASE).username or "guest"
    _mgmt("PUT", f"vhosts/{quoted}")
    _mgmt("PUT", f"permissions/{quoted}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
    try:
        yield vhost_url(vhost)
    finally:
        with contextlib.suppress(urllib.error.URLError):
            _mgmt("DELETE", f"vhosts/{quoted}")


@pytest.fixture(scope="session")
def private_rabbit() -> Iterator[RabbitNode]:
    """A RabbitMQ node of the tests' own, for tests that stop the broker."""
    node = RabbitNode()
    node.start()
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture(autouse=True)
async def no_leaked_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running (kopf's tests do the same): a task nobody
    awaits is a resource nobody closes. Set up first, so it checks after every other fixture's
    teardown; a task gets a moment to finish what it was cancelled for."""
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    left = {t for t in asyncio.all_tasks() - before if t is not me and not t.done()}
    if left:
        _, left = await asyncio.wait(left, timeout=1.0)
    if left:
        for task in left:
            task.cancel()
        names = sorted(f"{t.get_name()} ({t.get_coro()!r:.120}, waiting at {_where(t)})" for t in left)
        pytest.fail(f"{request.node.nodeid} leaked {len(left)} asyncio task(s): {names}", pytrace=False)


def _where(task: asyncio.Task[object]) -> str:
    frames = task.get_stack()
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} in {frame.f_code.co_name}"

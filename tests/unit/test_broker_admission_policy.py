"""broker-api's admission policy at its connection caps (which connection gives way to a new one),
on fake connections whose state the test sets. The same behaviour over real sockets:
tests/integration/test_broker_admission.py."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.broker_api.serving import EVICT_AFTER_S, ServerLimits, _GuardedHandler, _GuardedServer, _Metrics


class FakeConnection(_GuardedHandler):
    """A connection that is waiting for a request head (for ``waited_s``) or busy with a request."""

    def __init__(self, waited_s: float | None) -> None:  # no aiohttp state at all
        self._waited = waited_s
        self._task_handler = None
        self.closed = False

    def waiting(self) -> bool:
        return self._waited is not None and not self.closed

    def waited_s(self) -> float:
        assert self._waited is not None
        return self._waited

    def force_close(self) -> None:
        self.closed = True


class FakeTransport:
    def __init__(self, client: str) -> None:
        self.client = client
        self.aborted = False

    def get_extra_info(self, name: str) -> Any:
        return (self.client, 40000) if name == "peername" else None

    def abort(self) -> None:
        self.aborted = True


async def _routes(request: Any) -> web.StreamResponse:
    return web.Response()


def _server(**limits: Any) -> _GuardedServer:
    return _GuardedServer(
        _routes,
        loop=asyncio.get_running_loop(),
        limits=ServerLimits(**limits),
        metrics=_Metrics(CollectorRegistry()),
    )


def _open(
    server: _GuardedServer, client: str, waited_s: float | None
) -> tuple[FakeConnection, FakeTransport]:
    conn, transport = FakeConnection(waited_s), FakeTransport(client)
    server.connection_made(conn, transport)  # type: ignore[arg-type]
    return conn, transport


OLD = EVICT_AFTER_S + 1
FRESH = 0.0


async def test_at_the_total_cap_the_oldest_long_waiting_connection_gives_way() -> None:
    server = _server(max_connections=3, max_connections_per_client=3, overflow_connections=2)
    busy, _ = _open(server, "10.0.0.1", None)
    slow, _ = _open(server, "10.0.0.2", OLD)
    slower, _ = _open(server, "10.0.0.3", OLD)
    probe, _ = _open(server, "10.0.0.9", FRESH)
    assert (busy.closed, slow.closed, slower.closed) == (False, True, False)
    assert probe.over_cap is None


async def test_a_flood_of_fresh_connections_never_displaces_a_lone_one() -> None:
    """A probe's connection (its address's only one) whose head is on its way stays; a fresh one of
    an address holding several gives way; with none such the newcomer is over the cap (503)."""
    server = _server(max_connections=3, max_connections_per_client=3, overflow_connections=2)
    probe, _ = _open(server, "10.0.0.9", FRESH)
    flood = [_open(server, "10.0.0.5", FRESH)[0] for _ in range(2)]
    newcomer, _ = _open(server, "10.0.0.6", FRESH)
    assert not probe.closed and flood[0].closed and not flood[1].closed
    assert newcomer.over_cap is None
    # Now every address holds one connection: the next newcomer is over the cap, nobody is cut.
    lone, _ = _open(server, "10.0.0.7", FRESH)
    assert lone.over_cap == "total" and not any(c.closed for c in (probe, flood[1], newcomer))


async def test_over_its_own_cap_a_client_is_answered_429_rather_than_its_fresh_connections_cut() -> None:
    server = _server(max_connections=10, max_connections_per_client=2, overflow_connections=2)
    mine = [_open(server, "10.0.0.5", FRESH)[0] for _ in range(2)]
    burst, _ = _open(server, "10.0.0.5", FRESH)
    assert burst.over_cap == "per-client" and not any(c.closed for c in mine)
    idle = _open(server, "10.0.0.7", OLD)[0]
    _open(server, "10.0.0.7", None)
    again, _ = _open(server, "10.0.0.7", FRESH)  # its idle keep-alive connection gives way
    assert idle.closed and again.over_cap is None


async def test_only_a_full_overflow_of_busy_connections_resets() -> None:
    server = _server(max_connections=1, max_connections_per_client=1, overflow_connections=2)
    _open(server, "10.0.0.1", None)
    over = [_open(server, f"10.0.0.{i}", None) for i in (2, 3)]
    assert all(conn.over_cap == "total" and not t.aborted for conn, t in over)
    _, transport = _open(server, "10.0.0.4", FRESH)
    assert transport.aborted
    server.connection_lost(over[0][0])
    late, transport = _open(server, "10.0.0.5", FRESH)
    assert late.over_cap == "total" and not transport.aborted

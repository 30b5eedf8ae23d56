"""Snapshots in parts through the whole stack (issue 19): the watcher's ``SNAPSHOT_PART_BYTES`` set
to 16 KiB, so 60 mediations make every ``kabanero.snapshot`` several parts, and snapshots every 2 s.

Over many snapshot revisions in parts, OTC stays exact and gets no write at all: otc-writer applies
a revision only once it holds every part (a part applied alone would have deleted about two thirds
of the trigger tools, then recreated them). A change in the middle costs exactly its own writes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scripts.driver import BROKERS, Driver, driven, fault_env
from shared.events import RoutingKeys
from tests.helpers import EventTap, wait_until

pytestmark = pytest.mark.e2e

PART_BYTES = 16 * 1024
MEDIATIONS = 60
PARAMS = {"cluster": "default", "namespace": "kabanero"}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Driver]:
    env = fault_env(kabanero_watcher={"SNAPSHOT_PART_BYTES": str(PART_BYTES), "SNAPSHOT_INTERVAL_S": "2"})
    async with driven("parts", tmp_path / "logs", extra_env=env) as w:
        yield w


def whole_revisions(tap: EventTap) -> dict[int, int]:
    """Snapshot revision -> parts, for the revisions whose every part went by."""
    seen: dict[int, set[int]] = {}
    parts: dict[int, int] = {}
    for event in tap.of_type(RoutingKeys.SNAPSHOT):
        revision = int(event.data["revision"])
        seen.setdefault(revision, set()).add(int(event.data["part"]))
        parts[revision] = int(event.data["parts"])
    return {r: n for r, n in parts.items() if seen[r] == set(range(1, n + 1))}


async def later_snapshots(tap: EventTap, after: int, count: int) -> list[int]:
    """Wait for ``count`` whole snapshot revisions newer than ``after``; their part counts."""
    await wait_until(
        lambda: len([r for r in whole_revisions(tap) if r > after]) >= count,
        timeout=60,
        what=f"{count} snapshots after revision {after}",
    )
    return [n for r, n in sorted(whole_revisions(tap).items()) if r > after]


async def test_snapshots_in_parts_keep_otc_exact_and_delete_nothing_in_between(world: Driver) -> None:
    w = world
    for broker, sid in BROKERS:
        await w.provision_and_bind(broker, sid, PARAMS)
    mediations: dict[str, int | None] = {f"m{n:02d}": 1 for n in range(MEDIATIONS)}
    await w.set_mediations(("mediator", "connections"), **mediations)
    await w.converged("60 mediations", timeout=90)
    await w.quiet(timeout=60)

    async with EventTap(w.stack.amqp_url, (RoutingKeys.SNAPSHOT,)) as tap:
        # An unchanged world over several snapshots in parts: no write at all.
        mark = await w.mark()
        parts = await later_snapshots(tap, 0, 3)
        assert min(parts) >= 4, parts  # 60 mediations in 16 KiB parts
        sizes = [
            len(e.model_dump_json(exclude_none=True).encode()) for e in tap.of_type(RoutingKeys.SNAPSHOT)
        ]
        assert max(sizes) <= PART_BYTES
        await w.quiet(timeout=60)
        assert (await w.calls(mark))[1] == []
        await w.converged("after snapshots in parts", timeout=5)

        # One mediation changed, one removed, one added, while snapshots go on: exactly those writes.
        mark = await w.mark()
        await w.set_mediations(m05=2, m10=None, m70=1)
        await w.converged("after the change", timeout=60)
        last = max(whole_revisions(tap))
        await later_snapshots(tap, last, 2)
        await w.quiet(timeout=60)
        await w.converged("after more snapshots", timeout=5)
        # The mediator and its connections are two objects, written one after the other: m05 and
        # m70 may each be patched once more as the watcher sees the second.
        writes = (await w.calls(mark))[1]
        methods = sorted(c["method"] for c in writes)
        assert methods.count("DELETE") == 1 and methods.count("POST") == 1, methods
        patched = [json.dumps(c.get("body")) for c in writes if c["method"] == "PATCH"]
        assert all("m05" in body or "m70" in body for body in patched), patched
    assert await w.drain_dead_letters() == []

"""ResourceWatcher loop against a scripted API (real kubernetes_asyncio ``Watch``): errors never end it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from services.kabanero_watcher.cache import MEDIATORS, ClusterCache
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.watching import ResourceWatcher
from tests.helpers import wait_until


class _Content:
    def __init__(self, lines: asyncio.Queue[bytes]) -> None:
        self._lines = lines

    async def readline(self) -> bytes:
        return await self._lines.get()


class _Response:
    def __init__(self, lines: asyncio.Queue[bytes]) -> None:
        self.content = _Content(lines)

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


class ScriptedApi:
    """``list_cluster_custom_object`` for one type: a list, or a stream fed line by line from a queue."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.missing = False
        self.lists = 0
        self.watches = 0
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()

    async def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> Any:
        """:rtype: object"""
        if self.missing:
            raise ApiException(status=404, reason="Not Found")
        if kw.get("watch"):
            self.watches += 1
            return _Response(self.lines)
        self.lists += 1
        return {"metadata": {"resourceVersion": str(10 + self.lists)}, "items": list(self.items)}


def _mediator(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"mediations": [{"name": "m"}]}}


@contextlib.asynccontextmanager
async def running(api: ScriptedApi, **settings: Any) -> AsyncIterator[tuple[ResourceWatcher, list[set[str]]]]:
    values: dict[str, Any] = {
        "inactivity_timeout_s": 30,
        "reconnect_backoff_s": 0.01,
        "reconnect_backoff_max_s": 0.05,
        "optional_reprobe_s": 0.2,
    }
    marks: list[set[str]] = []
    watcher = ResourceWatcher(
        api=api,  # type: ignore[arg-type]
        resource=MEDIATORS,
        namespace=None,
        cache=ClusterCache("c"),
        settings=Settings(**(values | settings)),
        on_change=marks.append,
        on_relist=lambda: None,
    )
    task = asyncio.create_task(watcher.run())
    try:
        await wait_until(
            lambda: task.done() or (watcher.synced.is_set() and (api.missing or api.watches == 1)),
            timeout=5,
            what="listed and watching",
        )
        yield watcher, marks
        assert not task.done(), task.exception() if task.done() else None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"kind": "Status"}\n', id="no-type-no-object"),
        pytest.param(
            b'{"type": "BOOKMARK", "object": {"kind": "EventMediator"}}\n', id="bookmark-without-rv"
        ),
        pytest.param(b'{"type": "ERROR", "object": {"code": 500}}\n', id="error-without-reason"),
    ],
)
async def test_a_malformed_event_line_reconnects_from_the_last_rv(line: bytes) -> None:
    api = ScriptedApi([_mediator("a")])
    async with running(api) as (watcher, _):
        api.lines.put_nowait(b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "42"}}}\n')
        await wait_until(lambda: watcher.rv == "42", timeout=5, what="bookmark RV")
        api.lines.put_nowait(line)
        await wait_until(lambda: api.watches == 2, timeout=5, what="reconnect")
        assert watcher.rv == "42" and api.lists == 1  # resumed, not re-listed


async def test_a_lone_404_of_a_listed_crd_keeps_its_objects_a_lasting_one_drops_them() -> None:
    api = ScriptedApi([_mediator("a")])
    async with running(api, optional_reprobe_s=0.3) as (watcher, marks):
        assert watcher.cache.count(MEDIATORS) == 1
        # A hiccup: the stream ends, the reconnect answers 404, the next probe lists again.
        api.missing = True
        api.lines.put_nowait(b"")
        await wait_until(lambda: watcher.absence_suspected, timeout=5, what="404 seen")
        api.missing = False
        await wait_until(lambda: api.lists == 2, timeout=5, what="re-probe lists")
        assert watcher.cache.count(MEDIATORS) == 1 and MEDIATORS.name not in watcher.cache.absent
        assert not watcher.absence_suspected
        # A real removal: still 404 one re-probe later -> absent, objects dropped, namespace marked.
        await wait_until(lambda: api.watches == 2, timeout=5, what="watching again")
        marks.clear()
        api.missing = True
        api.lines.put_nowait(b"")
        await wait_until(lambda: MEDIATORS.name in watcher.cache.absent, timeout=5, what="absent")
        assert watcher.cache.count(MEDIATORS) == 0 and {"ns"} in marks


async def test_a_404_at_the_first_probe_means_absent_at_once() -> None:
    api = ScriptedApi([])
    api.missing = True
    async with running(api, optional_reprobe_s=60) as (watcher, _):
        await wait_until(lambda: watcher.synced.is_set(), timeout=5, what="synced")
        assert MEDIATORS.name in watcher.cache.absent and api.lists == 0

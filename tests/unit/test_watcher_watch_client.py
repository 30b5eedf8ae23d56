"""The watch stream reuses the watcher's ApiClient: the library's builds one per connect, whose SSL
context loads the CA store (about 70 ms of CPU on the event loop each time)."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.watch import watch as library_watch

from services.kabanero_watcher.kube import Watch


async def test_a_watch_given_the_client_builds_none_and_leaves_it_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = Configuration()
    cfg.host = "http://127.0.0.1:1"
    shared = ApiClient(configuration=cfg)
    built: list[object] = []

    def build(*args: object) -> ApiClient:
        built.append(args)
        return shared

    monkeypatch.setattr(library_watch, "ApiClient", build)
    closed: list[bool] = []
    really_close = shared.close

    async def close() -> None:
        closed.append(True)

    monkeypatch.setattr(shared, "close", close)
    async with Watch(shared) as w:
        assert w._api_client is shared
    assert built == [] and closed == []  # none built, the shared one still open
    async with Watch():  # without one: the library's own, closed with it
        pass
    assert len(built) == 1 and closed == [True]
    await really_close()

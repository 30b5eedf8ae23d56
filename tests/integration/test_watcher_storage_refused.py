"""A namespace whose published state MongoDB refuses for good is set aside; the others proceed.

A record over 16 MiB can never be stored (the embedded server refuses it as a real one does):
retrying it every ``publish_retry_s`` stalled every namespace of the cluster, their snapshots and
resyncs too. Now the watcher logs the reason, counts the namespace in
``kotc_watcher_namespaces_refused``, names it in /readyz, and tries it again when it changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulators.kube.testing import KubeEmulator
from tests.helpers import EventTap, wait_until
from tests.integration.test_watcher_events import (
    kabanero,
    mediator,
    ready,
    started,
    update_spec,
    watcher_settings,
)


@pytest.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator.running(auto_namespaces=True, bookmark_interval=0.3) as emulator:
        yield emulator


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


def _shrink(spec: dict[str, Any]) -> None:
    spec["mediations"][0]["body"] = [{"=": "sendEvent(dest, body, header)"}]


async def test_a_refused_namespace_is_set_aside_and_the_others_proceed(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    kube.store.create(kabanero("fine"))
    kube.store.create(mediator("fine"))
    kube.store.create(kabanero("huge"))
    huge = mediator("huge")
    huge["spec"]["mediations"][0]["body"] = [{"=": "x" * 17_000_000}]  # its trigger: 17 MB
    kube.store.create(huge)
    settings = watcher_settings(kube, amqp_url, mongodb_url)
    async with EventTap(amqp_url, ("kabanero.#",)) as tap:
        runtime = await started(settings)
        try:
            # The other namespace is published, snapshots included, and nothing is left to retry:
            # the loops go idle (a failure retried every publish_retry_s never would).
            await tap.wait_for(1, routing_key="kabanero.snapshot", timeout=20)
            session = runtime.session
            assert session is not None
            await asyncio.wait_for(session.idle.wait(), 20)
            assert "10334" in session.refused["huge"]
            assert {(e.subject or "").split("/")[1] for e in tap.events} == {"fine"}
            assert session.synced

            status, body = await _get(runtime.http_port, "/readyz")
            assert status == 503 and "MongoDB refuses the published state of 'huge'" in body, body
            _, metrics = await _get(runtime.http_port, "/metrics")
            assert 'kotc_watcher_namespaces_refused{cluster="test"} 1.0' in metrics

            # Fixed in the cluster: the namespace is tried again, published, and no longer refused.
            update_spec(kube, "eventmediators", "webhook", _shrink, ns="huge")
            await ready(runtime)
            await wait_until(
                lambda: "huge" in {(e.subject or "").split("/")[1] for e in tap.events},
                what="namespace huge published",
            )
            assert session.refused == {}
        finally:
            await runtime.stop()

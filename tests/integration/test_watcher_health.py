"""kabanero-watcher tells the truth in /readyz: an unreachable API server, a second cluster under one
CLUSTER_NAME (cluster identity: the kube-system namespace uid recorded per name)."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest

from emulators.kube.testing import KubeEmulator
from services.kabanero_watcher.app import WatcherRuntime
from tests.helpers import wait_until
from tests.integration.test_watcher_events import kabanero, ready, started, watcher_settings


async def _readyz(runtime: WatcherRuntime) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{runtime.http_port}/readyz") as r:
        return r.status, await r.json()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_watcher_without_its_api_server_is_not_ready_and_says_why(
    amqp_url: str, mongodb_url: str
) -> None:
    async with KubeEmulator.running(auto_namespaces=True) as kube:
        settings = watcher_settings(kube, amqp_url, mongodb_url)
    dead = settings.model_copy(update={"kube_api_url": f"http://127.0.0.1:{_closed_port()}"})
    runtime = await started(dead)
    try:

        async def failing() -> bool:
            status, body = await _readyz(runtime)
            return status == 503 and "cannot reach the Kubernetes API" in body["checks"]["lease"]

        await wait_until(failing, timeout=15, what="readyz 503 naming the API server")
        _, body = await _readyz(runtime)
        assert "lease rounds failed in a row" in body["checks"]["lease"], body
        assert not runtime.leading
    finally:
        await runtime.stop()


async def test_watcher_whose_api_server_hangs_is_not_ready_within_a_lease_duration(
    amqp_url: str, mongodb_url: str
) -> None:
    """An API server that accepts connections and never answers: every round lasts the whole request
    timeout, so counting failed rounds alone would take long; the clock says it within one lease."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts, nobody answers
        async with KubeEmulator.running(auto_namespaces=True) as kube:
            settings = watcher_settings(kube, amqp_url, mongodb_url, kube_request_timeout_s=5.0)
        hung = settings.model_copy(update={"kube_api_url": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        runtime = await started(hung)
        try:

            async def failing() -> bool:
                status, body = await _readyz(runtime)
                return status == 503 and "no lease round succeeded for" in body["checks"]["lease"]

            # lease_duration_s is 2 in these settings; one round alone takes the 5 s request timeout.
            await wait_until(failing, timeout=4.5, what="readyz 503 while the first round still hangs")
            _, body = await _readyz(runtime)
            assert "still waiting" in body["checks"]["lease"], body
        finally:
            await runtime.stop()


@pytest.mark.parametrize("family", ["kabanero", "tekton"])
async def test_two_clusters_under_one_cluster_name_the_second_refuses_to_lead(
    amqp_url: str, mongodb_url: str, family: str
) -> None:
    """Whatever the watcher mirrors: a Tekton-only install (WATCH_FAMILIES=tekton, clusters without
    the Kabanero CRDs) is held to one cluster per CLUSTER_NAME like a Kabanero one."""
    cluster: dict[str, Any] = {"crds": ["tekton-v0.11.3"], "kabanero": False} if family == "tekton" else {}
    async with (
        KubeEmulator.running(auto_namespaces=True, **cluster) as kube_a,
        KubeEmulator.running(auto_namespaces=True, **cluster) as kube_b,
    ):
        if family == "kabanero":
            kube_a.store.create(kabanero())
            kube_b.store.create(kabanero())
        uid_a = kube_a.store.get("namespaces", None, "kube-system")["metadata"]["uid"]
        uid_b = kube_b.store.get("namespaces", None, "kube-system")["metadata"]["uid"]
        assert uid_a != uid_b
        families = (family,)
        a = await started(
            watcher_settings(kube_a, amqp_url, mongodb_url, holder_identity="a", watch_families=families)
        )
        b: WatcherRuntime | None = None
        try:
            await ready(a)
            b = await started(
                watcher_settings(kube_b, amqp_url, mongodb_url, holder_identity="b", watch_families=families)
            )

            async def refused() -> bool:
                assert b is not None
                status, body = await _readyz(b)
                return status == 503 and "two clusters share one CLUSTER_NAME" in body["checks"]["lease"]

            await wait_until(refused, timeout=10, what="b refuses to lead")
            _, body = await _readyz(b)
            assert uid_a in body["checks"]["lease"] and uid_b in body["checks"]["lease"], body
            assert not b.leading and b.session is None
            # b never took its own cluster's lease: nothing of cluster B is published as "test".
            assert kube_b.store.list_objects("leases") == []
            assert a.leading and (await _readyz(a))[0] == 200
        finally:
            await a.stop()
            if b is not None:
                await b.stop()

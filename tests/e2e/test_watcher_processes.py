"""Two kabanero-watcher processes: exactly one publishes; SIGKILL of the leader hands over by the lease."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from emulators.kube.testing import KubeEmulator
from tests.helpers import EventTap, wait_until
from tests.integration.test_watcher_events import CHANGES, TRIGGER, changes, connections, kabanero, mediator

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 2

pytestmark = pytest.mark.e2e


async def _spawn(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str, identity: str
) -> asyncio.subprocess.Process:
    env = os.environ | {
        "AMQP_URL": amqp_url,
        "MONGODB_URL": mongodb_url,
        "KUBE_API_URL": kube.url,
        "CLUSTER_NAME": "test",
        "HTTP_PORT": "0",
        "HTTP_HOST": "127.0.0.1",
        "LEASE_NAMESPACE": "default",
        "LEASE_DURATION_S": str(LEASE_S),
        "LEASE_RENEW_S": "0.3",
        "INACTIVITY_TIMEOUT_S": "5",
        "HOLDER_IDENTITY": identity,
        "LOG_FORMAT": "json",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.kabanero_watcher", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def _holder(kube: KubeEmulator) -> str | None:
    try:
        holder = kube.store.get("leases", "default", "kabanero-watcher")["spec"]["holderIdentity"]
    except Exception:
        return None
    return holder if isinstance(holder, str) else None


async def test_killed_leader_is_replaced_within_the_lease_period(amqp_url: str, mongodb_url: str) -> None:
    async with (
        KubeEmulator.running(auto_namespaces=True, bookmark_interval=0.5) as kube,
        EventTap(amqp_url, CHANGES) as tap,
    ):
        kube.store.create(kabanero())
        procs = {name: await _spawn(kube, amqp_url, mongodb_url, name) for name in ("p1", "p2")}
        try:
            await tap.wait_for(1, routing_key="kabanero.instance.changed", timeout=20)
            leader = await wait_until(lambda: _holder(kube), timeout=5, what="a lease holder")
            kube.store.create(mediator())
            await tap.wait_for(1, routing_key="kabanero.trigger.created", timeout=10)

            procs[leader].send_signal(signal.SIGKILL)
            await procs[leader].wait()
            killed_at = time.monotonic()
            standby = next(n for n in procs if n != leader)
            await wait_until(lambda: _holder(kube) == standby, timeout=LEASE_S + 6, what="handover")
            # The lease period, plus a renew period and scheduling of two processes on a loaded machine.
            assert time.monotonic() - killed_at < LEASE_S + 3
            kube.store.create(connections())
            await tap.wait_for(1, routing_key="kabanero.trigger.updated", timeout=10)
        finally:
            for proc in procs.values():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                await asyncio.wait_for(proc.wait(), 15)
    assert changes(tap) == [
        ("kabanero.instance.changed", "test/kabanero"),
        ("kabanero.trigger.created", TRIGGER),
        ("kabanero.trigger.updated", TRIGGER),
    ]
    survivor = procs[standby]
    assert survivor.returncode == 0  # clean SIGTERM

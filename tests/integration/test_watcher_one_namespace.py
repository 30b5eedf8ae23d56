"""kabanero-watcher over one namespace of thousands of mediations (issue 19), with the real parts:
the Kubernetes emulator, RabbitMQ, MongoDB. The 20,000-mediation figures are ``bench.one_namespace``'s.

A Lease of 2 s (renewed every 0.3 s) is the tight budget here: today's main derived 3,000
mediations matched against 3,000 connection items in one go, long enough for the Lease to lapse and
the leadership term to end before anything was published.
"""

from __future__ import annotations

import copy
from typing import Any

import aiohttp

from emulators.kube.testing import KubeEmulator
from services.kabanero_watcher.app import WatcherRuntime
from tests.helpers import EventTap, wait_until
from tests.integration.test_watcher_events import kabanero, started, watcher_settings

NS = "big"
MEDIATORS = 3
PER_MEDIATOR = 1000


def _world(kube: KubeEmulator) -> None:
    kube.store.create(kabanero(NS))
    for m in range(MEDIATORS):
        names = [f"m{i:04d}" for i in range(PER_MEDIATOR)]
        kube.store.create(
            {
                "apiVersion": "events.kabanero.io/v1alpha1",
                "kind": "EventMediator",
                "metadata": {"name": f"webhook-{m}", "namespace": NS},
                "spec": {
                    "mediations": [
                        {"name": n, "selector": {"urlPattern": n}, "sendTo": ["dest"]} for n in names
                    ]
                },
            }
        )
        kube.store.create(
            {
                "apiVersion": "events.kabanero.io/v1alpha1",
                "kind": "EventConnections",
                "metadata": {"name": f"connections-{m}", "namespace": NS},
                "spec": {
                    "connections": [
                        {
                            "from": {
                                "mediator": {"name": f"webhook-{m}", "mediation": n, "destination": "dest"}
                            },
                            "to": [{"https": [{"url": f"https://listener-{m}/{n}"}]}],
                        }
                        for n in names
                    ]
                },
            }
        )


async def _readyz(runtime: WatcherRuntime) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{runtime.http_port}/readyz") as r:
        body: dict[str, Any] = await r.json()
        return body


async def test_a_namespace_of_3000_mediations_syncs_in_one_leadership_term_and_an_edit_is_one_event(
    amqp_url: str, mongodb_url: str
) -> None:
    total = MEDIATORS * PER_MEDIATOR
    async with KubeEmulator.running(auto_namespaces=True, bookmark_interval=0.5) as kube:
        _world(kube)
        settings = watcher_settings(kube, amqp_url, mongodb_url, publish_batch=500)
        async with EventTap(amqp_url, ("kabanero.#",)) as tap:
            runtime = await started(settings)
            try:
                await wait_until(lambda: runtime.session is not None, timeout=20, what="leading")
                session = runtime.session
                assert session is not None
                await wait_until(
                    lambda: len(tap.of_type("kabanero.trigger.created")) >= total,
                    timeout=150,
                    interval=0.2,
                    what=f"{total} triggers created",
                )
                # The Lease was renewed throughout: the term that started the sync finished it.
                assert runtime.session is session and runtime.leading
                await wait_until(lambda: session.synced and session.idle.is_set(), timeout=30, what="idle")
                created = tap.of_type("kabanero.trigger.created")
                assert len({e.subject for e in created}) == total == len(created)
                one = next(e for e in created if e.subject == f"test/{NS}/mediation/webhook-1/m0007")
                assert one.data["destinations"] == ["https://listener-1/m0007"]
                assert not any(r.pending for r in runtime.state.in_namespace(NS, "trigger"))
                assert session.emitter.pacer.yields > 0
                # One edit among 3,000: one update event, for that mediation.
                mediator = copy.deepcopy(kube.store.get("eventmediators", NS, "webhook-2"))
                mediator["spec"]["mediations"][5]["selector"]["urlPattern"] = "edited"
                kube.store.update(mediator)
                updated = await tap.wait_for(1, routing_key="kabanero.trigger.updated", timeout=30)
                assert [e.subject for e in updated] == [f"test/{NS}/mediation/webhook-2/m0005"]
                checks = (await _readyz(runtime))["checks"]
                assert "event-loop" in checks and "lease" in checks, checks
            finally:
                await runtime.stop()

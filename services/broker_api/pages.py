"""The services' own pages (their ``dashboard_url`` with ``BROKER_PUBLIC_URL``) and the consumers
that feed them, for the brokers a deployment serves: a Kabanero service's page shows the watcher's
outcomes (``broker-api.outcomes``), a Tekton service's the installation of its cluster
(``broker-api.tekton``). broker-api keeps what it learns in its own collections (``latest``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from services.broker_api.dashboard import EVENTS_ROUTE, dashboard_route
from services.broker_api.dashboard import ROUTE as DASHBOARD_ROUTE
from services.broker_api.instances import Policy
from services.broker_api.kabanero_instances import QUEUE as INSTANCES_QUEUE
from services.broker_api.kabanero_instances import KabaneroInstanceStore
from services.broker_api.latest import LatestStore
from services.broker_api.models import InstanceRecord
from services.broker_api.outcomes import QUEUE as OUTCOMES_QUEUE
from services.broker_api.outcomes import OutcomeStore
from services.broker_api.settings import Settings
from services.broker_api.store import InstanceStore
from services.broker_api.tekton_installations import QUEUE as TEKTON_QUEUE
from services.broker_api.tekton_installations import InstallationStore
from services.broker_api.tekton_page import ROUTE as TEKTON_ROUTE
from services.broker_api.tekton_page import tekton_route
from services.broker_api.tool_states import QUEUE as TOOLS_QUEUE
from services.broker_api.tool_states import ToolStateStore
from shared.amqp.consumer import Consumer
from shared.infra import Infra


def add_pages(
    app: web.Application, settings: Settings, *, infra: Infra, policy: Policy, store: InstanceStore
) -> dict[str, Consumer[Any]]:
    """Add the pages of the served brokers to ``app``; the consumers to run, by task name."""
    consumers: dict[str, Consumer[Any]] = {}
    # Every service's tools, as otc-writer reports them (services.broker_api.tool_states).
    tools = ToolStateStore(infra.db)

    def consume(task: str, queue: str, into: LatestStore[Any] | ToolStateStore) -> None:
        consumers[task] = Consumer(
            infra.amqp,
            infra.publisher,
            queue,
            into.handle,
            metrics=infra.consumer_metrics,
            topology=infra.topology,
            key_of=into.key_of,
            decode=into.decode,
            probes=infra.probes(),
        )

    consume("tools-consumer", TOOLS_QUEUE, tools)

    async def indexes(_: web.Application) -> AsyncIterator[None]:
        await tools.ensure_indexes()
        yield

    app.cleanup_ctx.append(indexes)

    def landing(rec: InstanceRecord) -> str:
        return policy.landing_url(rec.kind, rec.instance_id, rec.parameters)

    # Consumed whatever brokers are served, like the tools: every service declares the queue
    # (shared.amqp.topology), and the watchers report every Kabanero instance of their cluster.
    kabanero = KabaneroInstanceStore(infra.db)
    consume("instances-consumer", INSTANCES_QUEUE, kabanero)
    if settings.serves("kabanero-broker"):
        outcomes = OutcomeStore(infra.db)
        consume("outcomes-consumer", OUTCOMES_QUEUE, outcomes)
        app.router.add_get(
            DASHBOARD_ROUTE,
            dashboard_route(
                policy.links, lambda sid: store.get("kabanero", sid), outcomes, landing, tools, kabanero
            ),
        )
    if settings.serves("kabanero-events-broker"):
        app.router.add_get(
            EVENTS_ROUTE,
            dashboard_route(
                policy.links,
                lambda sid: store.get("kabanero-events", sid),
                OutcomeStore(infra.db),
                landing,
                tools,
                kabanero,
                kind="kabanero-events",
            ),
        )
    if settings.serves("tekton-broker"):
        installations = InstallationStore(infra.db)
        consume("tekton-consumer", TEKTON_QUEUE, installations)
        app.router.add_get(
            TEKTON_ROUTE,
            tekton_route(policy.links, lambda sid: store.get("tekton", sid), installations, tools),
        )
    return consumers

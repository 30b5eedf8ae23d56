"""The services' own pages (their ``dashboard_url`` with ``BROKER_PUBLIC_URL``) and the consumers
that feed them, for the brokers a deployment serves: a Kabanero service's page shows the watcher's
outcomes (``broker-api.outcomes``), a Tekton service's the installation of its cluster
(``broker-api.tekton``). broker-api keeps what it learns in its own collections (``latest``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.broker_api.dashboard import ROUTE as DASHBOARD_ROUTE
from services.broker_api.dashboard import dashboard_route
from services.broker_api.instances import Policy
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
from shared.amqp.consumer import Consumer
from shared.infra import Infra


def add_pages(
    app: web.Application, settings: Settings, *, infra: Infra, policy: Policy, store: InstanceStore
) -> dict[str, Consumer[Any]]:
    """Add the pages of the served brokers to ``app``; the consumers to run, by task name."""
    consumers: dict[str, Consumer[Any]] = {}

    def consume(task: str, queue: str, into: LatestStore[Any]) -> None:
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

    if settings.serves("kabanero-broker"):
        outcomes = OutcomeStore(infra.db)
        consume("outcomes-consumer", OUTCOMES_QUEUE, outcomes)

        def landing(rec: InstanceRecord) -> str:
            return policy.landing_url(rec.kind, rec.instance_id, rec.parameters)

        app.router.add_get(
            DASHBOARD_ROUTE,
            dashboard_route(policy.links, lambda sid: store.get("kabanero", sid), outcomes, landing),
        )
    if settings.serves("tekton-broker"):
        installations = InstallationStore(infra.db)
        consume("tekton-consumer", TEKTON_QUEUE, installations)
        app.router.add_get(
            TEKTON_ROUTE, tekton_route(policy.links, lambda sid: store.get("tekton", sid), installations)
        )
    return consumers

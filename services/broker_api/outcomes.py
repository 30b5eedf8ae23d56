"""What the watchers did with the Kabanero CRs of services that create their instance, as broker-api
learns it from ``kabanero.command.outcome`` (queue ``broker-api.outcomes``), for the dashboards.

Kept in a collection of broker-api's own, ``service_instance_outcomes`` (one document per sid, the
highest revision: :class:`services.broker_api.latest.LatestStore`), not in the
``service_instances`` record: that record is written by compare-and-set on its revision, and an
outcome written into it between a request's read and its write would be overwritten by the
request's ``$set`` (or would make every request race with the watcher). The watcher's collection
``watch_owned_instances`` stays the watcher's: broker-api never reads it.
"""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from services.broker_api.latest import LatestStore
from shared.events import CommandOutcomeData
from shared.mongo import Document

COLLECTION = "service_instance_outcomes"
QUEUE = "broker-api.outcomes"


class OutcomeStore(LatestStore[CommandOutcomeData]):
    """The last outcome per sid."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        super().__init__(db, COLLECTION, CommandOutcomeData, lambda o: (o.instance_id, o.revision))

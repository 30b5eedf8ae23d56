"""What the watcher of each cluster found of its Tekton installation, as broker-api learns it from
``tekton.installation.changed`` (queue ``broker-api.tekton``), for the Tekton services' pages.

One document per cluster in broker-api's own collection ``service_tekton_installations``, the
highest revision kept (:class:`services.broker_api.latest.LatestStore`): replays and late messages
change nothing. broker-api never reads the watcher's collections.
"""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from services.broker_api.latest import LatestStore
from shared.events import TektonInstallationData
from shared.mongo import Document

COLLECTION = "service_tekton_installations"
QUEUE = "broker-api.tekton"


class InstallationStore(LatestStore[TektonInstallationData]):
    """The last installation report per cluster."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        super().__init__(db, COLLECTION, TektonInstallationData, lambda d: (d.cluster, d.revision))

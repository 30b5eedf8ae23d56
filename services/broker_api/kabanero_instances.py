"""What the watcher of each cluster found of each Kabanero instance, as broker-api learns it from
``kabanero.instance.changed|deleted`` (queue ``broker-api.instances``), for the Kabanero and
Kabanero Events services' pages: the Kabanero version and the repositories (stack hubs, pipelines,
gitops) the instance uses.

One document per instance (``cluster/namespace``) in broker-api's own collection
``service_kabanero_instances``, the highest revision kept (:class:`services.broker_api.latest.LatestStore`):
replays and late messages change nothing. broker-api never reads the watcher's collections.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from pymongo.asynchronous.database import AsyncDatabase

from services.broker_api.latest import LatestStore
from shared.events import InstanceData
from shared.mongo import Document

COLLECTION = "service_kabanero_instances"
QUEUE = "broker-api.instances"
MAX_REPOSITORIES = 100


class KabaneroInstanceStore(LatestStore[InstanceData]):
    """The last report per instance (``cluster/namespace``)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        super().__init__(db, COLLECTION, InstanceData, lambda d: (d.instance.scope, d.revision))


class ShownRepository(BaseModel):
    url: str = Field(description="an http(s) repository URL")
    kinds: list[str] = Field(description="stack-hub, pipeline, gitops, trigger")


class ShownKabanero(BaseModel):
    """The instance as the watcher of its cluster last found it."""

    exists: bool = Field(description="False: the watcher reports no Kabanero CR there (any more)")
    name: str | None = None
    version: str | None = Field(default=None, description="Kabanero spec.version")
    repositories: list[ShownRepository] = Field(default_factory=list)
    revision: int


def shown(found: InstanceData | None) -> ShownKabanero | None:
    if found is None:
        return None
    repos = [
        ShownRepository(url=r.url, kinds=list(r.kinds))
        for r in found.repositories[:MAX_REPOSITORIES]
        if urlsplit(r.url).scheme in ("http", "https") and urlsplit(r.url).netloc
    ]
    return ShownKabanero(
        exists=not found.deleted,
        name=found.instance.name,
        version=found.version,
        repositories=repos,
        revision=found.revision,
    )


def render(found: ShownKabanero | None) -> str:
    """What the watcher found (HTML, inside the page's first section)."""
    e = html.escape
    if found is None:
        return "<p class=pending>The watcher of the cluster has not reported this instance yet.</p>"
    if not found.exists:
        return "<p class=missing>The watcher of the cluster reports no Kabanero CR in this namespace.</p>"
    version = f"Kabanero {found.version}" if found.version else "Kabanero (version not set)"
    items = "".join(
        f"<li><a href='{e(r.url)}' rel=noreferrer>{e(r.url)}</a> ({e(', '.join(r.kinds))})</li>"
        for r in found.repositories
    )
    repos = f"<h3>Repositories it uses</h3><ul>{items}</ul>" if items else ""
    return f"<p class=found>{e(version)}, as the watcher of the cluster found it.</p>{repos}"

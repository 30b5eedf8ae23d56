"""Cluster identity: one ``CLUSTER_NAME`` stands for one Kubernetes cluster.

Two watchers given the same ``CLUSTER_NAME`` but pointed at different clusters would each publish
their own cluster's snapshot under that name, and each snapshot would delete and recreate the
other's tools. The uid of the ``kube-system`` namespace identifies a cluster (it lives as long as
the cluster; the approach of e.g. Argo CD and Istio). The first watcher to lead a name records the
uid in ``watch_clusters``; a watcher whose cluster has another uid refuses to lead, with an error
that says what to fix. A uid that cannot be read (RBAC without ``get`` on namespaces) is logged
once and not enforced.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.kabanero_watcher.kube import ApiClient, ApiException, CoreV1Api
from shared.mongo import Document

log = logging.getLogger(__name__)

COLLECTION = "watch_clusters"
IDENTITY_NAMESPACE = "kube-system"


class RecordedIdentity(BaseModel):
    """One ``watch_clusters`` document: the cluster a ``CLUSTER_NAME`` was first led on."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    cluster_name: str = Field(alias="_id")
    uid: str | None = None
    recorded_by: str | None = None
    recorded_at: datetime | None = None


async def recorded_identity(db: AsyncDatabase[Document], cluster_name: str) -> RecordedIdentity | None:
    doc = await db[COLLECTION].find_one({"_id": cluster_name})
    return RecordedIdentity.model_validate(doc) if doc else None


class IdentityConflict(Exception):
    """This watcher's cluster is not the one its ``CLUSTER_NAME`` was first recorded for."""


class ClusterIdentity:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        api_client: ApiClient,
        cluster_name: str,
        *,
        holder: str,
        timeout_s: float = 10.0,
    ) -> None:
        self._db = db
        self._coll = db[COLLECTION]
        self._core = CoreV1Api(api_client)
        self.cluster_name = cluster_name
        self._holder = holder
        self._timeout = timeout_s
        self.uid: str | None = None
        self.verified = False
        self._unknown_logged = False

    async def _read_uid(self) -> str | None:
        try:
            ns = await self._core.read_namespace(IDENTITY_NAMESPACE, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status in (401, 403, 404):
                if not self._unknown_logged:
                    self._unknown_logged = True
                    log.warning(
                        "cluster identity unknown (namespace %s: HTTP %s); two clusters sharing "
                        "CLUSTER_NAME cannot be detected",
                        IDENTITY_NAMESPACE,
                        exc.status,
                        extra={"cluster": self.cluster_name},
                    )
                return None
            raise
        uid = ns.metadata.uid if ns.metadata is not None else None
        return str(uid) if uid else None

    async def verify(self) -> None:
        """Raise :class:`IdentityConflict` unless this cluster may lead ``CLUSTER_NAME``."""
        if self.verified:
            return
        uid = self.uid or await self._read_uid()
        if uid is None:
            return
        self.uid = uid
        try:
            await self._coll.insert_one(
                {
                    "_id": self.cluster_name,
                    "uid": uid,
                    "recorded_by": self._holder,
                    "recorded_at": datetime.now(UTC),
                }
            )
            log.info("cluster identity recorded", extra={"cluster": self.cluster_name, "uid": uid})
        except DuplicateKeyError:
            recorded = await recorded_identity(self._db, self.cluster_name)
            if recorded is None or recorded.uid != uid:
                theirs, by = (recorded.uid, recorded.recorded_by) if recorded else (None, None)
                raise IdentityConflict(
                    f"CLUSTER_NAME {self.cluster_name!r} belongs to another cluster (kube-system uid "
                    f"{theirs}, recorded by {by or '?'}), but this watcher's "
                    f"Kubernetes API is cluster {uid}: two clusters share one CLUSTER_NAME. Refusing to "
                    f"lead. Give each cluster its own CLUSTER_NAME, or, if the cluster was rebuilt, delete "
                    f"the {COLLECTION} document {self.cluster_name!r}"
                ) from None
        self.verified = True

"""A family: one kind of system the watcher mirrors (Kabanero, Tekton), as the session drives it.

The session owns what every family shares (list-then-watch per resource and scope, 410 re-lists,
bookmarks, stall detection, the reconcile loop, snapshots on a timer and on request, the Lease);
a family brings its resource types, its cache (what the objects mean), and how a namespace's
derived state becomes events (through the shared :class:`~.emitting.Emitter`).
"""

from __future__ import annotations

from typing import Protocol

from services.kabanero_watcher.resources import ObjectCache


class Family(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def cache(self) -> ObjectCache:
        """What the family's watchers feed (its resource types are ``cache.resources``)."""
        ...

    def published_namespaces(self) -> set[str]:
        """Namespaces with records of this family (their deletes are found by diffing them too)."""
        ...

    def prepare(self) -> set[str]:
        """Before a reconcile pass: namespaces to reconcile because cluster-wide facts changed."""
        ...

    async def reconcile(self, namespace: str, *, snapshot: bool = False) -> bool:
        """Derive the namespace and publish the difference; True when everything the family
        published there just went (the session then publishes a final snapshot). With
        ``snapshot`` (one is due), a family may publish the namespace's snapshot with the
        difference (its snapshot revision advances): the session then takes no other snapshot of
        it in this pass."""
        ...

    async def after_pass(self) -> None:
        """After a reconcile pass: publish what sums up the cluster (Tekton: its installation)."""
        ...

    def snapshot_namespaces(self) -> list[str]:
        """Namespaces whose published state is live (a snapshot is due for each)."""
        ...

    async def snapshot(self, namespace: str) -> None: ...

    def snapshot_revision(self, namespace: str) -> int: ...

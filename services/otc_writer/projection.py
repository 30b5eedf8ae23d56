"""otc-writer's own view of the world, learned only from events (docs/architecture.md §6).

- ``otc_writer_triggers``: one document per trigger key (deleted ones kept as tombstones so an older
  ``created`` arriving late is recognised as stale).
- ``otc_writer_services``: Kabanero Events services -> instance and bound toolchains.
- ``otc_writer_instances``: the last snapshot revision applied per instance.
- ``otc_writer_bindings``: per instance, the toolchains bound to it (the union over its services).
  Derived from ``otc_writer_services``; written with a compare-and-set on ``rev`` so two replicas
  handling two services of one instance never lose one. A missing document (data of an older
  version) is derived on first read.
- Each trigger document carries a copy of its instance's bindings (``bindings``, with their
  ``rev``): the revision compare-and-set of a trigger change returns them, so a change costs one
  projection round trip. A bind or unbind updates the copies (one ``update_many`` per service
  event); a new trigger (or one stored by an older version) reads the bindings once and keeps a
  copy unless a newer one arrived meanwhile. Either the trigger handler sees the new bindings, or
  its write came first and the bind's own instance reconcile, which reads the triggers after
  updating the copies, sees the trigger.

Every write is a compare-and-set on ``revision`` (an upsert whose filter requires a lower revision; a
duplicate-key error means the stored one is as new or newer), so stale events change nothing even
when two replicas race. An *equal* revision (a redelivery) changes nothing either but still
reconciles, since the first delivery may have failed after the projection write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.otc_writer.desired import instance_scope
from shared.events import ServiceEventData, SnapshotData, TriggerData
from shared.mongo import Document

TRIGGERS = "otc_writer_triggers"
SERVICES = "otc_writer_services"
INSTANCES = "otc_writer_instances"
BINDINGS = "otc_writer_bindings"
SCHEMA_VERSION = 1

State = Literal["stored", "same", "stale"]


class AppliedSnapshot(BaseModel):
    """One ``otc_writer_instances`` document: the last snapshot revision applied to an instance."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    scope: str = Field(alias="_id")
    revision: int
    exists: bool = True


class Projection:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.triggers: AsyncCollection[Document] = db[TRIGGERS]
        self.services: AsyncCollection[Document] = db[SERVICES]
        self.instances: AsyncCollection[Document] = db[INSTANCES]
        self.bindings: AsyncCollection[Document] = db[BINDINGS]

    async def ensure_indexes(self) -> None:
        await self.triggers.create_index([("scope", ASCENDING)], name="scope")
        await self.services.create_index([("scope", ASCENDING)], name="scope")

    @staticmethod
    async def _cas(
        coll: AsyncCollection[Document], doc_id: str, revision: int, fields: dict[str, Any]
    ) -> bool:
        """Store ``fields`` if ``revision`` is newer than the stored one; False when stale.

        An equal revision is a redelivery: nothing is stored, but True is returned, because the
        first delivery may have updated the projection and then failed before OTC converged
        (a transient OTC error, a crash). Reconciling again is level-triggered and costs no OTC
        write when everything was already applied; skipping it would lose the change.
        """
        return await Projection._cas_state(coll, doc_id, revision, fields) != "stale"

    @staticmethod
    async def _cas_state(
        coll: AsyncCollection[Document], doc_id: str, revision: int, fields: dict[str, Any]
    ) -> State:
        """``stored`` (newer revision written), ``same`` (equal revision, unchanged) or ``stale``."""
        try:
            result = await coll.update_one(
                {"_id": doc_id, "revision": {"$lt": revision}},
                {
                    "$set": {
                        **fields,
                        "revision": revision,
                        "schema_version": SCHEMA_VERSION,
                        "updated_at": datetime.now(UTC),
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError:
            pass  # the stored revision is as new or newer
        else:
            if result.matched_count == 1 or result.upserted_id is not None:
                return "stored"
        doc = await coll.find_one({"_id": doc_id}, {"revision": 1})
        return "same" if doc is not None and doc.get("revision") == revision else "stale"

    async def applied_snapshot(self, scope: str) -> AppliedSnapshot | None:
        """What the writer last applied of an instance's snapshots (``kabanero-otc resync`` waits on it)."""
        doc = await self.instances.find_one({"_id": scope})
        return AppliedSnapshot.model_validate(doc) if doc else None

    async def put_trigger(self, trigger: TriggerData) -> State:
        """Store the trigger if its revision is newer (one update by ``_id``; one more read otherwise)."""
        state, _ = await self.put_trigger_bound(trigger, bindings=False)
        return state

    async def put_trigger_bound(
        self, trigger: TriggerData, *, bindings: bool = True
    ) -> tuple[State, set[str]]:
        """As ``put_trigger``, and the toolchains bound to its instance (from the trigger's copy).

        A newer revision: one ``find_one_and_update`` that returns the copy. A trigger without a
        copy (new): one read of the bindings and one conditional update to keep the copy.
        """
        scope = instance_scope(trigger.instance)
        fields = {
            "scope": scope,
            "deleted": trigger.deleted,
            "data": trigger.model_dump(mode="json"),
            "revision": trigger.revision,
            "schema_version": SCHEMA_VERSION,
            "updated_at": datetime.now(UTC),
        }
        doc: Document | None
        try:
            doc = await self.triggers.find_one_and_update(
                {"_id": trigger.key.id, "revision": {"$lt": trigger.revision}},
                {"$set": fields},
                projection={"bindings": 1},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            state: State = "stored"
        except DuplicateKeyError:  # the stored revision is as new or newer
            doc = await self.triggers.find_one({"_id": trigger.key.id}, {"revision": 1, "bindings": 1})
            state = "same" if doc is not None and doc.get("revision") == trigger.revision else "stale"
        if not bindings or state == "stale":
            return state, set()
        copy = (doc or {}).get("bindings")
        if isinstance(copy, dict) and "rev" in copy:
            return state, set(copy.get("toolchains", []))
        rev, toolchains = await self._bindings(scope)
        await self.triggers.update_one(
            {"_id": trigger.key.id, **_older_copy(rev)},
            {"$set": {"bindings": {"toolchains": sorted(toolchains), "rev": rev}}},
        )
        return state, toolchains

    async def get_trigger(self, key_id: str) -> TriggerData | None:
        doc = await self.triggers.find_one({"_id": key_id})
        return TriggerData.model_validate(doc["data"]) if doc else None

    async def triggers_in_scope(self, scope: str) -> list[TriggerData]:
        """Every trigger of one instance, deleted ones included (one query per instance reconcile)."""
        cursor = self.triggers.find({"scope": scope})
        return [TriggerData.model_validate(d["data"]) async for d in cursor]

    async def live_triggers(self, scope: str) -> list[TriggerData]:
        """The instance's triggers that exist (operator queries, e.g. ``kabanero-otc plan``)."""
        return [t for t in await self.triggers_in_scope(scope) if not t.deleted]

    async def put_snapshot(self, snap: SnapshotData) -> list[TriggerData] | None:
        """Apply a snapshot: its triggers (each by its own revision) and tombstones for the missing.

        The instance's triggers are read once and compared in memory: only a trigger whose revision
        is newer than the stored one is written. Returns every trigger of the instance as stored now
        (for the reconcile), or None when the snapshot is stale.

        A snapshot may be handled after trigger events published after it was taken (it came back
        from a retry queue). With ``trigger_revisions`` a trigger it does not list is tombstoned only
        if the watcher had already published that trigger's stored revision when it took the
        snapshot: a trigger created (or re-created) later is left alone. Without them (an older
        watcher) every unlisted trigger is tombstoned, and then only on the first delivery.
        """
        scope = instance_scope(snap.instance)
        state = await self._cas_state(self.instances, scope, snap.revision, {"exists": snap.exists})
        if state == "stale":
            return None
        stored = {t.key.id: t for t in await self.triggers_in_scope(scope)}
        listed = snap.triggers if snap.exists else []
        await self._store_newer(listed, stored)
        if state == "same" and snap.trigger_revisions is None:
            # A redelivery: tombstones were written by the first delivery, and repeating them now
            # could delete a trigger created after this snapshot was taken. Reconcile only.
            return list(stored.values())
        await self._tombstone_unlisted({t.key.id for t in listed}, stored, snap.trigger_revisions)
        return list(stored.values())

    async def _store_newer(self, listed: list[TriggerData], stored: dict[str, TriggerData]) -> None:
        """Write each listed trigger newer than the stored one (by its own revision); ``stored``
        is updated in place."""
        for trigger in listed:
            known = stored.get(trigger.key.id)
            newer = known is None or known.revision < trigger.revision
            if newer and await self.put_trigger(trigger) == "stored":
                stored[trigger.key.id] = trigger

    async def _tombstone_unlisted(
        self, listed: set[str], stored: dict[str, TriggerData], known: dict[str, int] | None
    ) -> None:
        """Tombstone the live stored triggers the snapshot does not list; ``stored`` is updated in place."""
        for key_id, trigger in list(stored.items()):
            if key_id in listed or trigger.deleted:
                continue
            tomb = await self._tombstone(trigger, known)
            if tomb is not None:
                stored[key_id] = tomb

    async def _tombstone(self, trigger: TriggerData, known: dict[str, int] | None) -> TriggerData | None:
        """Absent from a newer snapshot: gone, at least at the stored revision (so a replayed older
        ``created`` stays stale). None when the snapshot is not the one to judge, or it changed."""
        revision = trigger.revision
        if known is not None:
            seen = known.get(trigger.key.id)
            if seen is None or seen < revision:
                return None  # published after the snapshot was taken: not the snapshot's to judge
            revision = seen  # the watcher's delete: older events of the key become stale
        tomb = trigger.model_copy(update={"deleted": True, "revision": revision})
        result = await self.triggers.update_one(
            {"_id": trigger.key.id, "revision": trigger.revision},
            {"$set": {"deleted": True, "revision": revision, "data": tomb.model_dump(mode="json")}},
        )
        return tomb if result.matched_count == 1 else None

    async def put_service(self, event: ServiceEventData, *, deleted: bool) -> tuple[bool, str | None]:
        """Store the service; returns (fresh, previous scope when the instance it stands for changed)."""
        before = await self.services.find_one({"_id": event.instance_id})
        scope = event.parameters.scope
        fresh = await self._cas(
            self.services,
            event.instance_id,
            event.revision,
            {
                "scope": scope,
                "toolchains": [] if deleted else sorted(set(event.toolchains)),
                "deleted": deleted,
            },
        )
        previous = before.get("scope") if before else None
        moved = previous if previous and previous != scope else None
        if fresh:
            for affected in (moved, scope):
                if affected is not None:
                    await self._derive_bindings(affected)
        return fresh, moved

    async def bound_toolchains(self, scope: str) -> set[str]:
        """The toolchains bound to an instance: one read by ``_id``."""
        return (await self._bindings(scope))[1]

    async def _bindings(self, scope: str) -> tuple[int, set[str]]:
        doc = await self.bindings.find_one({"_id": scope})
        if doc is None:
            return await self._derive_bindings(scope)  # written by an older version: derive it once
        return int(doc.get("rev", 0)), set(doc.get("toolchains", []))

    async def _derive_bindings(self, scope: str) -> tuple[int, set[str]]:
        """Recompute the instance's bindings from its services, store them (compare-and-set) and
        update the triggers' copies (always: a redelivery finishes what a crash interrupted)."""
        while True:
            doc = await self.bindings.find_one({"_id": scope})
            rev = int(doc.get("rev", 0)) if doc else 0
            cursor = self.services.find({"scope": scope, "deleted": False})
            toolchains = sorted({tc async for d in cursor for tc in d.get("toolchains", [])})
            if doc is None or doc.get("toolchains") != toolchains:
                update = {"toolchains": toolchains, "rev": rev + 1, "updated_at": datetime.now(UTC)}
                try:
                    if doc is None:
                        await self.bindings.insert_one({"_id": scope, **update})
                    elif (
                        await self.bindings.update_one({"_id": scope, "rev": rev}, {"$set": update})
                    ).matched_count != 1:
                        continue  # another writer derived it first: derive again from what it saw
                except DuplicateKeyError:
                    continue
                rev += 1
            await self.triggers.update_many(
                {"scope": scope, **_older_copy(rev)},
                {"$set": {"bindings": {"toolchains": toolchains, "rev": rev}}},
            )
            return rev, set(toolchains)


def _older_copy(rev: int) -> dict[str, Any]:
    """Filter: the trigger has no copy of its instance's bindings, or one older than ``rev``."""
    return {"$or": [{"bindings": {"$exists": False}}, {"bindings.rev": {"$lt": rev}}]}

"""otc-writer's own view of the world, learned only from events (docs/architecture.md §6).

- ``otc_writer_triggers``: one document per trigger key (deleted ones kept as tombstones so an older
  ``created`` arriving late is recognised as stale).
- ``otc_writer_services``: Kabanero Events services -> instance and bound toolchains.
- ``otc_writer_instances``: the last snapshot revision applied per instance.

Every write is a compare-and-set on ``revision`` (an upsert whose filter requires a lower revision; a
duplicate-key error means the stored one is as new or newer), so stale events change nothing even
when two replicas race. An *equal* revision (a redelivery) changes nothing either but still
reconciles, since the first delivery may have failed after the projection write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.otc_writer.desired import instance_scope
from shared.events import ServiceEventData, SnapshotData, TriggerData
from shared.mongo import Document

TRIGGERS = "otc_writer_triggers"
SERVICES = "otc_writer_services"
INSTANCES = "otc_writer_instances"
SCHEMA_VERSION = 1


class Projection:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.triggers: AsyncCollection[Document] = db[TRIGGERS]
        self.services: AsyncCollection[Document] = db[SERVICES]
        self.instances: AsyncCollection[Document] = db[INSTANCES]

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
    ) -> Literal["stored", "same", "stale"]:
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

    async def put_trigger(self, trigger: TriggerData) -> bool:
        return await self._cas(
            self.triggers,
            trigger.key.id,
            trigger.revision,
            {
                "scope": instance_scope(trigger.instance),
                "deleted": trigger.deleted,
                "data": trigger.model_dump(mode="json"),
            },
        )

    async def get_trigger(self, key_id: str) -> TriggerData | None:
        doc = await self.triggers.find_one({"_id": key_id})
        return TriggerData.model_validate(doc["data"]) if doc else None

    async def live_triggers(self, scope: str) -> list[TriggerData]:
        cursor = self.triggers.find({"scope": scope, "deleted": False})
        return [TriggerData.model_validate(d["data"]) async for d in cursor]

    async def put_snapshot(self, snap: SnapshotData) -> bool:
        """Apply a snapshot: its triggers (each by its own revision) and tombstones for the missing.

        A snapshot may be handled after trigger events published after it was taken (it came back
        from a retry queue). With ``trigger_revisions`` a trigger it does not list is tombstoned only
        if the watcher had already published that trigger's stored revision when it took the
        snapshot: a trigger created (or re-created) later is left alone. Without them (an older
        watcher) every unlisted trigger is tombstoned, and then only on the first delivery.
        """
        scope = instance_scope(snap.instance)
        state = await self._cas_state(self.instances, scope, snap.revision, {"exists": snap.exists})
        if state == "stale":
            return False
        listed = {t.key.id for t in snap.triggers} if snap.exists else set()
        if snap.exists:
            for trigger in snap.triggers:
                await self.put_trigger(trigger)  # each by its own revision: never regresses
        known = snap.trigger_revisions
        if state == "same" and known is None:
            # A redelivery: tombstones were written by the first delivery, and repeating them now
            # could delete a trigger created after this snapshot was taken. Reconcile only.
            return True
        async for doc in self.triggers.find({"scope": scope, "deleted": False}):
            if doc["_id"] in listed:
                continue
            revision = int(doc["revision"])
            if known is not None:
                seen = known.get(doc["_id"])
                if seen is None or seen < revision:
                    continue  # published after the snapshot was taken: not the snapshot's to judge
                revision = seen  # the watcher's delete: older events of the key become stale
            # Absent from a newer snapshot: gone. At least the stored revision, so a replayed older
            # ``created`` (revision <= this one) stays stale.
            data = TriggerData.model_validate(doc["data"]).model_copy(
                update={"deleted": True, "revision": revision}
            )
            await self.triggers.update_one(
                {"_id": doc["_id"], "revision": doc["revision"]},
                {"$set": {"deleted": True, "revision": revision, "data": data.model_dump(mode="json")}},
            )
        return True

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
        return fresh, (previous if previous and previous != scope else None)

    async def bound_toolchains(self, scope: str) -> set[str]:
        cursor = self.services.find({"scope": scope, "deleted": False})
        return {tc async for d in cursor for tc in d.get("toolchains", [])}

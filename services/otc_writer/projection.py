"""otc-writer's own view of the world, learned only from events (docs/architecture.md §6).

One machinery for every family of items (``family.py``: Kabanero triggers, Tekton cards):

- items (``otc_writer_triggers``, ``otc_writer_tekton_cards``): one document per item key (deleted
  ones kept as tombstones so an older ``created`` arriving late is recognised as stale).
- ``otc_writer_services``: Kabanero Events and Tekton services -> their scope (an instance, a
  cluster), ``namespaces`` (Tekton) and bound toolchains.
- ``otc_writer_instances``: the last snapshot revision applied per item scope (an instance, a Tekton
  namespace ``tekton:cluster/namespace``).
- ``otc_writer_snapshot_parts``: the parts of a snapshot revision published in several
  (``shared.snapshot_parts``), one document per part slot (``<scope>|<part>``, the part's data as
  its JSON text, within the watcher's ``SNAPSHOT_PART_BYTES``), until every part of the revision is
  here; then the whole snapshot is applied, and its parts deleted once OTC converged.
- ``otc_writer_bindings``: per item scope, the toolchains bound to it (the union over the services
  that bind it). Derived from ``otc_writer_services``; written with a compare-and-set on ``rev`` so
  two replicas handling two services of one scope never lose one. A scope seen for the first time
  has none: it is derived on first read.
- ``otc_writer_scopes`` (families whose services stand for many scopes: Tekton): per service scope
  (``tekton:cluster``), the item scopes seen so far, so a bind finds them by ``_id``. A scope is
  listed right before its bindings document is first derived (a bindings document therefore means
  a listed scope), and a service event writes the service before it reads the list: either the bind
  sees the scope, or the scope's first derive sees the bind's service.
- Each item document carries a copy of its scope's bindings (``bindings``, with their ``rev``): the
  revision compare-and-set of an item change returns them, so a change costs one projection round
  trip. A bind or unbind updates the copies (one ``update_many`` per scope); a new item reads the
  bindings once and keeps a copy unless a newer one arrived
  meanwhile. Either the item handler sees the new bindings, or its write came first and the bind's
  own scope reconcile, which reads the items after updating the copies, sees the item.

Every write is a compare-and-set on ``revision`` (an upsert whose filter requires a lower revision; a
duplicate-key error means the stored one is as new or newer), so stale events change nothing even
when two replicas race. An *equal* revision (a redelivery) changes nothing either but still
reconciles, since the first delivery may have failed after the projection write.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.otc_writer.converged import Converged
from services.otc_writer.family import FAMILIES, TEKTON, Family, Item, Snapshot, family_of_scope
from services.otc_writer.family import TRIGGERS as TRIGGER_FAMILY
from services.otc_writer.item_batch import ItemBatch
from shared.events import ServiceEventData, TriggerData
from shared.mongo import Document
from shared.snapshot_parts import IncompleteParts, join

TRIGGERS = TRIGGER_FAMILY.items
CARDS = TEKTON.items
SERVICES = "otc_writer_services"
INSTANCES = "otc_writer_instances"
BINDINGS = "otc_writer_bindings"
SCOPES = "otc_writer_scopes"
SNAPSHOT_PARTS = "otc_writer_snapshot_parts"
SCHEMA_VERSION = 1

State = Literal["stored", "same", "stale"]


class AppliedSnapshot(BaseModel):
    """One ``otc_writer_instances`` document: the last snapshot revision applied to a scope."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    scope: str = Field(alias="_id")
    revision: int
    exists: bool = True
    converged: Converged | None = None
    """The last snapshot whose reconcile ended with every tool applied (``converged.py``)."""


def _converged(doc: Document | None) -> Converged | None:
    """The converged record of a scope document; None when absent or of another shape."""
    raw = doc.get("converged") if doc is not None else None
    try:
        return Converged.model_validate(raw) if isinstance(raw, dict) else None
    except ValidationError:
        return None


class Projection:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._items: dict[str, AsyncCollection[Document]] = {f.name: db[f.items] for f in FAMILIES}
        self._batches = {name: ItemBatch(coll, name) for name, coll in self._items.items()}
        self.triggers = self._items[TRIGGER_FAMILY.name]
        self.services: AsyncCollection[Document] = db[SERVICES]
        self.instances: AsyncCollection[Document] = db[INSTANCES]
        self.bindings: AsyncCollection[Document] = db[BINDINGS]
        self.scopes: AsyncCollection[Document] = db[SCOPES]
        self.snapshot_parts: AsyncCollection[Document] = db[SNAPSHOT_PARTS]

    def items(self, family: Family[Any, Any]) -> AsyncCollection[Document]:
        return self._items[family.name]

    async def ensure_indexes(self) -> None:
        for coll in self._items.values():
            await coll.create_index([("scope", ASCENDING)], name="scope")
        await self.services.create_index([("scope", ASCENDING)], name="scope")
        await self.snapshot_parts.create_index([("scope", ASCENDING)], name="scope")

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
        """What the writer last applied of a scope's snapshots (``kabanero-otc resync`` waits on it)."""
        doc = await self.instances.find_one({"_id": scope})
        return AppliedSnapshot.model_validate(doc) if doc else None

    # --- items (any family) ---

    async def put_item[T: Item](self, family: Family[T, Any], item: T) -> State:
        """Store the item if its revision is newer (one update by ``_id``; one more read otherwise)."""
        state, _ = await self.put_item_bound(family, item, bindings=False)
        return state

    async def put_item_bound[T: Item](
        self, family: Family[T, Any], item: T, *, bindings: bool = True
    ) -> tuple[State, set[str]]:
        """As ``put_item``, and the toolchains bound to its scope (from the item's copy).

        A newer revision: one ``find_one_and_update`` that returns the copy, or, for an item whose
        copy this process knows, a fenced update grouped with other handlers' (``item_batch.py``:
        one round trip per batch). An item without a copy
        (new): one read of the bindings (derived, its scope listed first, when the scope is new) and
        one conditional update to keep the copy.
        """
        coll = self.items(family)
        scope = family.item_scope(item)
        fields = {
            "scope": scope,
            "deleted": item.deleted,
            "data": item.model_dump(mode="json"),
            "revision": item.revision,
            "schema_version": SCHEMA_VERSION,
            "updated_at": datetime.now(UTC),
        }
        batch = self._batches[family.name]
        if bindings and (known := await batch.put(item.key.id, item.revision, fields)) is not None:
            return "stored", set(known.toolchains)  # grouped with other handlers' (item_batch.py)
        doc: Document | None
        try:
            doc = await coll.find_one_and_update(
                {"_id": item.key.id, "revision": {"$lt": item.revision}},
                {"$set": fields},
                projection={"bindings": 1},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            state: State = "stored"
        except DuplicateKeyError:  # the stored revision is as new or newer
            doc = await coll.find_one({"_id": item.key.id}, {"revision": 1, "bindings": 1})
            state = "same" if doc is not None and doc.get("revision") == item.revision else "stale"
        if not bindings or state == "stale":
            return state, set()
        copy = (doc or {}).get("bindings")
        batch.saw(item.key.id, copy)
        if isinstance(copy, dict) and "rev" in copy:
            return state, set(copy.get("toolchains", []))
        rev, toolchains = await self._bindings(family, scope)
        kept = {"toolchains": sorted(toolchains), "rev": rev}
        result = await coll.update_one({"_id": item.key.id, **_older_copy(rev)}, {"$set": {"bindings": kept}})
        if result.matched_count == 1:
            batch.saw(item.key.id, kept)
        return state, toolchains

    async def get_item[T: Item](self, family: Family[T, Any], key_id: str) -> T | None:
        doc = await self.items(family).find_one({"_id": key_id})
        return family.parse_item(doc["data"]) if doc else None

    async def items_in_scope[T: Item](self, family: Family[T, Any], scope: str) -> list[T]:
        """Every item of one scope, deleted ones included (one query per scope reconcile)."""
        cursor = self.items(family).find({"scope": scope})
        return [family.parse_item(d["data"]) async for d in cursor]

    async def live_items[T: Item](self, family: Family[T, Any], scope: str) -> list[T]:
        """The scope's items that exist (operator queries, e.g. ``kabanero-otc plan``)."""
        return [t for t in await self.items_in_scope(family, scope) if not t.deleted]

    # --- the trigger family's names (kabanero-otc and the tests read them) ---

    async def get_trigger(self, key_id: str) -> TriggerData | None:
        return await self.get_item(TRIGGER_FAMILY, key_id)

    async def live_triggers(self, scope: str) -> list[TriggerData]:
        return await self.live_items(TRIGGER_FAMILY, scope)

    # --- snapshots ---

    async def whole_snapshot[N: Snapshot](self, family: Family[Any, N], snap: N) -> N | None:
        """The whole snapshot ``snap`` is a part of, once every part of its revision is stored; None
        while some are missing, or when the part is stale (a newer revision was applied).

        Each part is stored first, in its slot (``<scope>|<part>``: a newer revision overwrites an
        incomplete older one part by part; a redelivered part changes nothing). A part of a revision
        already applied is stored no more, but completes the revision again while its parts are
        still here (a redelivery after a crash between the apply and the converge). Commands: a
        read of the applied revision, the part's write, a read of the slots' revisions, and, once
        complete, one read of the parts.
        """
        if snap.parts == 1:
            return snap
        scope = family.snapshot_scope(snap)
        applied = await self.instances.find_one({"_id": scope}, {"revision": 1})
        applied_revision = int(applied.get("revision", -1)) if applied else -1
        if applied_revision > snap.revision:
            return None
        if applied_revision < snap.revision:
            await self._store_part(scope, snap)
        slots = [_slot(scope, n) for n in range(1, snap.parts + 1)]
        held = await self.snapshot_parts.find(
            {"_id": {"$in": slots}, "revision": snap.revision, "parts": snap.parts}, {"_id": 1}
        ).to_list()
        if len(held) < snap.parts:
            return None
        docs = await self.snapshot_parts.find({"_id": {"$in": slots}, "revision": snap.revision}).to_list()
        try:
            return join([cast(N, family.snapshot_model.model_validate_json(d["body"])) for d in docs])
        except IncompleteParts:
            return None  # a slot overwritten by a newer revision between the two reads

    async def _store_part(self, scope: str, snap: Snapshot) -> None:
        """The part in its slot, unless the slot holds this revision or a newer one already."""
        # A duplicate key: a redelivered part, or one of a revision already superseded.
        with contextlib.suppress(DuplicateKeyError):
            await self.snapshot_parts.update_one(
                {"_id": _slot(scope, snap.part), "revision": {"$lt": snap.revision}},
                {
                    "$set": {
                        "scope": scope,
                        "revision": snap.revision,
                        "part": snap.part,
                        "parts": snap.parts,
                        "body": snap.model_dump_json(),
                        "schema_version": SCHEMA_VERSION,
                        "updated_at": datetime.now(UTC),
                    }
                },
                upsert=True,
            )

    async def drop_snapshot_parts(self, scope: str, revision: int) -> None:
        """Forget the parts of an applied revision and of any older one that never completed."""
        await self.snapshot_parts.delete_many({"scope": scope, "revision": {"$lte": revision}})

    async def note_snapshot[N: Snapshot](
        self, family: Family[Any, N], snap: N
    ) -> tuple[State, Converged | None]:
        """The snapshot's revision compare-and-set on its scope's document, and the scope's
        converged record (``converged.py``) as it was: one command for a new revision, two for a
        redelivered or stale one."""
        scope = family.snapshot_scope(snap)
        fields = {
            "exists": family.snapshot_exists(snap),
            "revision": snap.revision,
            "schema_version": SCHEMA_VERSION,
            "updated_at": datetime.now(UTC),
        }
        try:
            before = await self.instances.find_one_and_update(
                {"_id": scope, "revision": {"$lt": snap.revision}},
                {"$set": fields},
                projection={"converged": 1},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        except DuplicateKeyError:  # the stored revision is as new or newer
            doc = await self.instances.find_one({"_id": scope}, {"revision": 1, "converged": 1})
            state: State = "same" if doc is not None and doc.get("revision") == snap.revision else "stale"
            return state, _converged(doc)
        return "stored", _converged(before)

    async def record_converged(self, scope: str, converged: Converged) -> None:
        """Every tool of the scope ended applied. A scope no snapshot has described yet (its items
        came as events, then a bind applied them) gets its document at revision 0, below any
        snapshot's, so its first snapshot is compared with the record too."""
        update = {"$set": {"converged": converged.model_dump()}}
        try:
            await self.instances.update_one(
                {"_id": scope},
                {**update, "$setOnInsert": {"revision": 0, "schema_version": SCHEMA_VERSION}},
                upsert=True,
            )
        except DuplicateKeyError:  # a snapshot's compare-and-set inserted it meanwhile
            await self.instances.update_one({"_id": scope}, update)

    async def unconverge(self, scope: str) -> None:
        """Some tool of the scope failed: its next snapshot runs in full, whatever it says."""
        await self.instances.update_one(
            {"_id": scope, "converged": {"$exists": True}}, {"$unset": {"converged": ""}}
        )

    async def store_snapshot[T: Item, N: Snapshot](self, family: Family[T, N], snap: N) -> list[T]:
        """Apply a noted snapshot: its items (each by its own revision) and tombstones for the missing.

        The scope's items are read once and compared in memory: only an item whose revision is newer
        than the stored one is written. Returns every item of the scope as stored now (for the
        reconcile).

        A snapshot may be handled after item events published after it was taken (it came back
        from a retry queue). So an item it does not list is tombstoned only if the producer had
        already published that item's stored revision when it took the snapshot (its known
        revisions: ``trigger_revisions``, ``card_revisions``): an item created (or re-created) later
        is left alone, and a redelivery tombstones nothing the first delivery did not.
        """
        scope = family.snapshot_scope(snap)
        listed = family.snapshot_items(snap)
        stored: dict[str, T] = {t.key.id: t for t in await self.items_in_scope(family, scope)}
        await self._store_newer(family, listed, stored)
        known = family.snapshot_known(snap)
        await self._tombstone_unlisted(family, {t.key.id for t in listed}, stored, known)
        return list(stored.values())

    async def _store_newer[T: Item](
        self, family: Family[T, Any], listed: list[T], stored: dict[str, T]
    ) -> None:
        """Write each listed item newer than the stored one (by its own revision); ``stored`` is
        updated in place."""
        for item in listed:
            known = stored.get(item.key.id)
            newer = known is None or known.revision < item.revision
            if newer and await self.put_item(family, item) == "stored":
                stored[item.key.id] = item

    async def _tombstone_unlisted[T: Item](
        self,
        family: Family[T, Any],
        listed: set[str],
        stored: dict[str, T],
        known: dict[str, int],
    ) -> None:
        """Tombstone the live stored items the snapshot does not list; ``stored`` is updated in place."""
        for key_id, item in list(stored.items()):
            if key_id in listed or item.deleted:
                continue
            tomb = await self._tombstone(family, item, known)
            if tomb is not None:
                stored[key_id] = tomb

    async def _tombstone[T: Item](self, family: Family[T, Any], item: T, known: dict[str, int]) -> T | None:
        """Absent from a newer snapshot: gone, at the revision the producer knew (so a replayed
        older ``created`` stays stale). None when the snapshot is not the one to judge, or it changed."""
        revision = known.get(item.key.id)
        if revision is None or revision < item.revision:
            return None  # published after the snapshot was taken: not the snapshot's to judge
        # The producer's revision of the key: its older events become stale.
        tomb = item.model_copy(update={"deleted": True, "revision": revision})
        result = await self.items(family).update_one(
            {"_id": item.key.id, "revision": item.revision},
            {"$set": {"deleted": True, "revision": revision, "data": tomb.model_dump(mode="json")}},
        )
        return tomb if result.matched_count == 1 else None

    # --- services and bindings ---

    async def put_service(
        self, family: Family[Any, Any], event: ServiceEventData, *, deleted: bool
    ) -> tuple[bool, list[str]]:
        """Store the service; returns (fresh, the item scopes whose bindings it may have changed:
        those of its scope, and of its previous scope when what it stands for changed)."""
        before = await self.services.find_one({"_id": event.instance_id})
        scope = event.scope
        fresh = await self._cas(
            self.services,
            event.instance_id,
            event.revision,
            {
                "kind": event.kind,
                "scope": scope,
                "namespaces": event.parameters.namespaces,
                "toolchains": [] if deleted else sorted(set(event.toolchains)),
                "deleted": deleted,
            },
        )
        previous = before.get("scope") if before else None
        service_scopes = [previous] if previous and previous != scope else []
        service_scopes.append(scope)
        affected: list[str] = []
        for service_scope in service_scopes:
            affected += [s for s in await self.scopes_of(family, service_scope) if s not in affected]
        if fresh:
            for item_scope in affected:
                await self._derive_bindings(family, item_scope)
        return fresh, affected

    async def scopes_of(self, family: Family[Any, Any], service_scope: str) -> list[str]:
        """The item scopes a service scope covers: itself, or (``listed``) those seen so far."""
        if not family.listed:
            return [service_scope]
        doc = await self.scopes.find_one({"_id": service_scope})
        return sorted(str(s) for s in (doc or {}).get("scopes", []))

    async def list_scope(self, family: Family[Any, Any], scope: str) -> None:
        """Record an item scope under its service scope (``listed`` families), before its bindings
        are read: a bind that lists the scopes after this sees it."""
        if family.listed:
            await self.scopes.update_one(
                {"_id": family.service_scope(scope)}, {"$addToSet": {"scopes": scope}}, upsert=True
            )

    async def bound_toolchains(self, scope: str) -> set[str]:
        """The toolchains bound to an item scope: one read by ``_id``."""
        return (await self.bindings_of(scope))[1]

    async def bindings_of(self, scope: str) -> tuple[int, set[str]]:
        """The bindings of an item scope: their revision (moves with every change) and toolchains."""
        return await self._bindings(family_of_scope(scope), scope)

    async def _bindings(self, family: Family[Any, Any], scope: str) -> tuple[int, set[str]]:
        doc = await self.bindings.find_one({"_id": scope})
        if doc is None:  # a new scope: listed first, then derived
            await self.list_scope(family, scope)
            return await self._derive_bindings(family, scope)
        return int(doc.get("rev", 0)), set(doc.get("toolchains", []))

    async def _bound_by(self, family: Family[Any, Any], scope: str) -> list[str]:
        """The toolchains of the live services that bind an item scope."""
        cursor = self.services.find({"scope": family.service_scope(scope), "deleted": False})
        return sorted({tc async for d in cursor if family.admits(d, scope) for tc in d.get("toolchains", [])})

    async def _derive_bindings(self, family: Family[Any, Any], scope: str) -> tuple[int, set[str]]:
        """Recompute the scope's bindings from its services, store them (compare-and-set) and
        update the items' copies (always: a redelivery finishes what a crash interrupted)."""
        while True:
            doc = await self.bindings.find_one({"_id": scope})
            rev = int(doc.get("rev", 0)) if doc else 0
            toolchains = await self._bound_by(family, scope)
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
            await self.items(family).update_many(
                {"scope": scope, **_older_copy(rev)},
                {"$set": {"bindings": {"toolchains": toolchains, "rev": rev}}},
            )
            return rev, set(toolchains)


def _slot(scope: str, part: int) -> str:
    return f"{scope}|{part}"


def _older_copy(rev: int) -> dict[str, Any]:
    """Filter: the item has no copy of its scope's bindings, or one older than ``rev``."""
    return {"$or": [{"bindings": {"$exists": False}}, {"bindings.rev": {"$lt": rev}}]}

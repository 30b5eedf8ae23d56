"""Families of mirrored objects: the little the projection and the reconcile must know of one kind.

The machinery (revision compare-and-set per item, snapshots with tombstones, bindings per scope with
their copies on the items, ledger reconcile, audit) is one; a family only says where its items live,
how an item and a snapshot map to a scope, which services bind a scope, and what tool an item
becomes in a toolchain:

- ``TRIGGERS``: Kabanero event triggers (``kabanero.trigger.*``, ``kabanero.snapshot``), one scope
  per Kabanero instance (``cluster/namespace``), bound by the Kabanero Events services of exactly
  that instance.
- ``TEKTON``: Tekton cards (``tekton.card.*``, ``tekton.snapshot``), one scope per namespace
  (``tekton:cluster/namespace``), bound by the Tekton services of the cluster whose ``namespaces``
  admit the namespace. A Tekton service stands for a whole cluster (``tekton:cluster``), so the
  projection keeps, per cluster, the list of card scopes it has seen (``listed``): a bind finds
  them by ``_id``, never by scanning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, cast

from pydantic import BaseModel

from services.otc_writer.desired import TRIGGER_PURPOSE, DesiredTool, TriggerToolStyle, desired_trigger_tool
from services.otc_writer.tekton_cards import TEKTON_PURPOSE, TektonCardStyle, desired_card_tool
from shared.events import (
    TEKTON_SCOPE_PREFIX,
    RoutingKeys,
    ServiceEventData,
    ServiceKind,
    SnapshotData,
    TektonCardData,
    TektonSnapshotData,
    TriggerData,
    tekton_cluster_scope,
)
from shared.mongo import Document
from shared.snapshot_parts import Parted


class Keyed(Protocol):
    @property
    def id(self) -> str: ...


class Item(Protocol):
    """What the machinery reads of an item (a trigger, a card): every item event carries its whole
    state, with a revision monotonic per key and a tombstone flag."""

    @property
    def key(self) -> Keyed: ...
    @property
    def revision(self) -> int: ...
    @property
    def deleted(self) -> bool: ...
    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...
    def model_copy(self, *, update: Mapping[str, Any] | None = ..., deep: bool = ...) -> Self: ...


class Snapshot(Parted, Protocol):
    """A snapshot, or one part of one (``shared.snapshot_parts``), as the projection stores it."""

    def model_dump_json(self) -> str: ...


@dataclass(frozen=True)
class ToolStyles:
    """Settings of the tools each family produces (passed down from the writer's settings)."""

    trigger: TriggerToolStyle = field(default_factory=TriggerToolStyle)
    tekton: TektonCardStyle = field(default_factory=TektonCardStyle)


@dataclass(frozen=True)
class Family[T: Item, N: Snapshot]:
    name: str
    """Label of the family's items in logs and ``kotc_otc_writer_stale_events_total{kind}``, and
    the coalescing sequence of its item events."""
    snapshot_label: str
    """The same for its snapshots."""
    purpose: str
    """Ledger purpose of its tools."""
    service_kind: ServiceKind
    items: str
    """Collection of its items (``_id`` = the item key)."""
    item_model: type[BaseModel]
    """The model of its items (event data, a stored item's ``data``): a ``T``."""
    snapshot_model: type[BaseModel]
    """The model of its snapshots: an ``N``."""
    item_routing: tuple[str, str, str]
    """created, updated, deleted."""
    snapshot_routing: str
    item_scope: Callable[[T], str]
    snapshot_scope: Callable[[N], str]
    snapshot_items: Callable[[N], list[T]]
    """What a snapshot lists (nothing when its scope is gone)."""
    snapshot_exists: Callable[[N], bool]
    """Whether the snapshot's scope exists (recorded with the applied snapshot revision)."""
    snapshot_known: Callable[[N], dict[str, int]]
    """Item key -> the revision the producer had published when it took the snapshot."""
    service_scope: Callable[[str], str]
    """Item scope -> the scope of the services that may bind it."""
    admits: Callable[[Document, str], bool]
    """Whether a stored service (of ``service_scope``) binds an item scope."""
    listed: bool
    """Services stand for many item scopes: the projection lists them per service scope."""
    desired: Callable[[T, str, ToolStyles], DesiredTool]
    """The tool an item must be in one toolchain."""

    def parse_item(self, raw: Any) -> T:
        """Validate a stored item's ``data`` (events arrive decoded); raises ``ValueError``."""
        return cast(T, self.item_model.model_validate(raw))

    def data_models(self) -> dict[str, type[BaseModel]]:
        """Routing-key pattern -> model of every event of the family (the consumer's decoder)."""
        return {
            f"service.{self.service_kind}.*": ServiceEventData,
            **dict.fromkeys(self.item_routing, self.item_model),
            self.snapshot_routing: self.snapshot_model,
        }


def _trigger_tool(trigger: TriggerData, toolchain_id: str, styles: ToolStyles) -> DesiredTool:
    return desired_trigger_tool(trigger, toolchain_id, styles.trigger)


def _card_tool(card: TektonCardData, toolchain_id: str, styles: ToolStyles) -> DesiredTool:
    return desired_card_tool(card, toolchain_id, styles.tekton)


def tekton_namespace(scope: str) -> tuple[str, str]:
    """``tekton:cluster/namespace`` -> (cluster, namespace); a namespace never holds a ``/``."""
    cluster, _, namespace = scope.removeprefix(TEKTON_SCOPE_PREFIX).rpartition("/")
    return cluster, namespace


def _tekton_service_scope(scope: str) -> str:
    return tekton_cluster_scope(tekton_namespace(scope)[0])


def _mirrors(service: Document, scope: str) -> bool:
    """A Tekton service's ``namespaces`` (None: all) admit the scope's namespace."""
    namespaces = service.get("namespaces")
    return namespaces is None or tekton_namespace(scope)[1] in namespaces


TRIGGERS: Family[TriggerData, SnapshotData] = Family(
    name="trigger",
    snapshot_label="snapshot",
    purpose=TRIGGER_PURPOSE,
    service_kind="kabanero-events",
    items="otc_writer_triggers",
    item_model=TriggerData,
    snapshot_model=SnapshotData,
    item_routing=(RoutingKeys.TRIGGER_CREATED, RoutingKeys.TRIGGER_UPDATED, RoutingKeys.TRIGGER_DELETED),
    snapshot_routing=RoutingKeys.SNAPSHOT,
    item_scope=lambda t: t.instance.scope,
    snapshot_scope=lambda s: s.instance.scope,
    snapshot_items=lambda s: s.triggers if s.exists else [],
    snapshot_exists=lambda s: s.exists,
    snapshot_known=lambda s: s.trigger_revisions,
    service_scope=lambda scope: scope,
    admits=lambda service, scope: True,
    listed=False,
    desired=_trigger_tool,
)

TEKTON: Family[TektonCardData, TektonSnapshotData] = Family(
    name="card",
    snapshot_label="card-snapshot",
    purpose=TEKTON_PURPOSE,
    service_kind="tekton",
    items="otc_writer_tekton_cards",
    item_model=TektonCardData,
    snapshot_model=TektonSnapshotData,
    item_routing=(RoutingKeys.CARD_CREATED, RoutingKeys.CARD_UPDATED, RoutingKeys.CARD_DELETED),
    snapshot_routing=RoutingKeys.TEKTON_SNAPSHOT,
    item_scope=lambda c: c.scope,
    snapshot_scope=lambda s: s.scope,
    snapshot_items=lambda s: s.cards,
    snapshot_exists=lambda s: True,
    snapshot_known=lambda s: s.card_revisions,
    service_scope=_tekton_service_scope,
    admits=_mirrors,
    listed=True,
    desired=_card_tool,
)

FAMILIES: tuple[Family[Any, Any], ...] = (TRIGGERS, TEKTON)


def family_of_scope(scope: str) -> Family[Any, Any]:
    """The family an item scope belongs to (Tekton scopes carry their prefix)."""
    return TEKTON if scope.startswith(TEKTON_SCOPE_PREFIX) else TRIGGERS

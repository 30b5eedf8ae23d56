"""The Tekton family: a cluster's Tekton installation, and one card per Pipeline and EventListener.

What it watches (``tekton_resources``): Pipelines and EventListeners in whichever group/version
the cluster serves (Kabanero 0.6-0.8 shipped Triggers in ``tekton.dev``, 0.9 in
``triggers.tekton.dev``), the Routes and Ingresses that expose ``el-<name>`` Services, and, for the
installation, the operators' cluster-scoped CRs plus the ConfigMaps, controller Deployments and
dashboard Route/Ingress of the install namespaces. It publishes ``tekton.card.*`` per card,
``tekton.snapshot`` per namespace and ``tekton.installation.changed`` per cluster (broker-api shows
it on the Tekton services' pages). A change of the installation's versions or dashboard re-derives
every card; a status-only change re-derives an unchanged card, which costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.kabanero_watcher.emitting import Emitter, Hashed, ItemKeys
from services.kabanero_watcher.pacing import run_steps
from services.kabanero_watcher.resources import ObjectCache, ResourceSpec
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.tekton_derive import (
    CONTROLLER_SELECTOR,
    Installation,
    InstallationObjects,
    Malformed,
    Obj,
    detect_installation,
    eventlistener_card,
    exposures,
    pipeline_card,
)
from shared.events import (
    RoutingKeys,
    TektonCardData,
    TektonInstallationData,
    TektonSnapshotData,
    content_hash,
)

log = logging.getLogger(__name__)

PIPELINES = ResourceSpec(
    "tekton.dev",
    "v1",
    "pipelines",
    optional=True,
    alternatives=(("tekton.dev", "v1beta1"), ("tekton.dev", "v1alpha1")),
)
EVENTLISTENERS = ResourceSpec(
    "triggers.tekton.dev",
    "v1beta1",
    "eventlisteners",
    optional=True,
    alternatives=(("triggers.tekton.dev", "v1alpha1"), ("tekton.dev", "v1alpha1")),
)
ROUTES = ResourceSpec("route.openshift.io", "v1", "routes", optional=True)
INGRESSES = ResourceSpec("networking.k8s.io", "v1", "ingresses", optional=True)
# OpenShift Pipelines named its CRD `config.operator.tekton.dev`: the plural is `config`.
OPENSHIFT_CONFIGS = ResourceSpec(
    "operator.tekton.dev", "v1alpha1", "config", optional=True, cluster_scoped=True
)
TEKTON_CONFIGS = ResourceSpec(
    "operator.tekton.dev", "v1alpha1", "tektonconfigs", optional=True, cluster_scoped=True
)
TEKTON_PIPELINE_CRS = ResourceSpec(
    "operator.tekton.dev", "v1alpha1", "tektonpipelines", optional=True, cluster_scoped=True
)

CARD_KINDS: frozenset[str] = frozenset({"card"})
CARD_KEYS = ItemKeys(RoutingKeys.CARD_CREATED, RoutingKeys.CARD_UPDATED, RoutingKeys.CARD_DELETED)
CLUSTER_WIDE = ""  # the state's namespace of the installation record (no namespace is named "")


@dataclass(frozen=True)
class InstallKinds:
    """The install namespaces' kinds (pinned to ``TEKTON_INSTALL_NAMESPACES``)."""

    config_maps: ResourceSpec
    deployments: ResourceSpec
    routes: ResourceSpec
    ingresses: ResourceSpec

    @classmethod
    def of(cls, namespaces: tuple[str, ...]) -> InstallKinds:
        return cls(
            config_maps=ResourceSpec(
                "", "v1", "configmaps", optional=True, namespaces=namespaces, alias="configmaps@tekton"
            ),
            deployments=ResourceSpec(
                "apps",
                "v1",
                "deployments",
                optional=True,
                label_selector=CONTROLLER_SELECTOR,
                namespaces=namespaces,
                alias="deployments@tekton",
            ),
            routes=ResourceSpec(
                "route.openshift.io",
                "v1",
                "routes",
                optional=True,
                namespaces=namespaces,
                alias="routes@tekton",
            ),
            ingresses=ResourceSpec(
                "networking.k8s.io",
                "v1",
                "ingresses",
                optional=True,
                namespaces=namespaces,
                alias="ingresses@tekton",
            ),
        )

    def all(self) -> tuple[ResourceSpec, ...]:
        return (self.config_maps, self.deployments, self.routes, self.ingresses)


INSTALL_CRS = (OPENSHIFT_CONFIGS, TEKTON_CONFIGS, TEKTON_PIPELINE_CRS)


def tekton_kinds(install: InstallKinds) -> tuple[ResourceSpec, ...]:
    """Every kind the family lists and watches (``kabanero-otc doctor`` checks the RBAC of each)."""
    return (PIPELINES, EVENTLISTENERS, ROUTES, INGRESSES, *INSTALL_CRS, *install.all())


@dataclass
class TektonDesired:
    namespace: str
    cards: dict[str, TektonCardData] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    """Card keys whose object is malformed right now: kept as published."""


class TektonCache(ObjectCache):
    def __init__(self, cluster: str, settings: Settings) -> None:
        self.cluster = cluster
        self.install = InstallKinds.of(settings.tekton_install_namespaces)
        self._searched = settings.tekton_install_namespaces
        self._dashboard_url = settings.tekton_dashboard_url
        super().__init__(tekton_kinds(self.install))
        self._install_names = {r.name for r in (*INSTALL_CRS, *self.install.all())}
        self.installation_dirty = True

    def replace(self, resource: ResourceSpec, scope: str | None, items: Iterable[dict[str, Any]]) -> set[str]:
        self.installation_dirty = True  # a (re)list may change what is served (Tekton installed later)
        return super().replace(resource, scope, items)

    def touched(self, resource: ResourceSpec, namespaces: set[str]) -> set[str]:
        if resource.name in self._install_names:
            self.installation_dirty = True  # the family re-derives every card if the facts changed
            return set()
        return namespaces

    def card_namespaces(self) -> set[str]:
        return {ns for ns, _ in (*self._keys(PIPELINES), *self._keys(EVENTLISTENERS))}

    def _keys(self, resource: ResourceSpec) -> list[tuple[str, str]]:
        return [(ns, name) for ns, objs in self._objects[resource.name].items() for name in objs]

    def installation(self) -> Installation:
        self.installation_dirty = False
        return detect_installation(
            self.cluster,
            InstallationObjects(
                openshift_configs=self.all_objects(OPENSHIFT_CONFIGS),
                tekton_configs=self.all_objects(TEKTON_CONFIGS),
                tekton_pipelines=self.all_objects(TEKTON_PIPELINE_CRS),
                config_maps=self.all_objects(self.install.config_maps),
                deployments=self.all_objects(self.install.deployments),
                routes=self.all_objects(self.install.routes),
                ingresses=self.all_objects(self.install.ingresses),
                pipelines_served=self.served.get(PIPELINES.name),
                searched=self._searched,
            ),
            dashboard_url=self._dashboard_url,
        )

    def desired(self, namespace: str, inst: Installation) -> TektonDesired:
        return run_steps(self.desired_steps(namespace, inst))

    def desired_steps(self, namespace: str, inst: Installation) -> Generator[None, None, TektonDesired]:
        """The namespace's cards, a step per object (paced by the reconciler: :mod:`pacing`)."""
        out = TektonDesired(namespace=namespace)
        pipelines_api = self.served.get(PIPELINES.name, PIPELINES.group + "/" + PIPELINES.version)
        for pipeline in self.in_namespace(PIPELINES, namespace):
            self._card(
                out, "Pipeline", pipeline, lambda p: pipeline_card(self.cluster, p, pipelines_api, inst)
            )
            yield
        listeners = self.in_namespace(EVENTLISTENERS, namespace)
        if listeners:
            exposed = exposures(self.in_namespace(ROUTES, namespace), self.in_namespace(INGRESSES, namespace))
            listeners_api = self.served.get(EVENTLISTENERS.name, "")
            for listener in listeners:
                self._card(
                    out,
                    "EventListener",
                    listener,
                    lambda el: eventlistener_card(self.cluster, el, listeners_api, inst, exposed),
                )
                yield
        return out

    def _card(self, out: TektonDesired, kind: str, obj: Obj, derive: Callable[[Obj], TektonCardData]) -> None:
        try:
            card: TektonCardData = derive(obj)
        except (Malformed, TypeError, AttributeError, ValueError) as exc:
            name = str((obj.get("metadata") or {}).get("name"))
            log.warning(
                "skipping malformed %s; its card left as published",
                kind,
                extra={"namespace": out.namespace, "object": name, "error": str(exc)[:200]},
            )
            out.frozen.add(f"tekton:{self.cluster}/{out.namespace}/{kind}/{name}")
            return
        out.cards[card.key.id] = card


class TektonFamily:
    name = "tekton"

    def __init__(self, cache: TektonCache, emitter: Emitter) -> None:
        self.cache = cache
        self.emitter = emitter
        self.state = emitter.state
        self.cluster = emitter.cluster
        self.inst: Installation | None = None
        self._summary_due = True
        self._last_change: tuple[str, datetime] | None = None

    def published_namespaces(self) -> set[str]:
        return self.state.namespaces(CARD_KINDS | {"tekton-snapshot"})

    def prepare(self) -> set[str]:
        """Re-detect the installation when its objects changed; a change of what the cards show
        (versions, dashboard) re-derives every namespace with cards, published or present."""
        if not self.cache.installation_dirty:
            return set()
        inst = self.cache.installation()
        if inst == self.inst:
            return set()
        if self.inst is None or (inst.found, inst.reason) != (self.inst.found, self.inst.reason):
            log.info("Tekton installation: %s", inst.reason, extra={"cluster": self.cluster})
        self.inst = inst
        self._summary_due = True
        return self.cache.card_namespaces() | self.state.namespaces(CARD_KINDS)

    async def reconcile(self, namespace: str, *, snapshot: bool = False) -> bool:
        """Publish what differs. A due snapshot (``snapshot``) is left to the session's snapshot
        round: a namespace holds a handful of cards, not the thousands of triggers of Kabanero's."""
        try:
            return await self._reconcile(namespace)
        finally:
            self.emitter.discard()

    async def _reconcile(self, namespace: str) -> bool:
        if self.inst is None:
            self.prepare()  # a reconcile before the first pass's prepare (not the session's order)
        assert self.inst is not None
        desired = await self.emitter.pacer.drive(self.cache.desired_steps(namespace, self.inst))
        self.emitter.resolve_pending(namespace, CARD_KINDS, lambda prev: desired.cards.get(prev.key))
        was_live = self.state.live_in_namespace(namespace, CARD_KINDS)

        def stamp(item: Hashed, revision: int) -> TektonCardData:
            assert isinstance(item, TektonCardData)
            return item.model_copy(update={"revision": revision})

        await self.emitter.diff_items(
            "card", namespace, desired.cards, CARD_KEYS, stamp, lambda prev: prev.key in desired.frozen
        )
        published = await self.emitter.flush()
        if published:
            routing_key, subject = published[-1]
            change = routing_key.rsplit(".", 1)[-1]
            self._last_change = (
                f"{change} {subject.removeprefix(f'tekton:{self.cluster}/')}",
                datetime.now(UTC),
            )
            self._summary_due = True
        return was_live and not self.state.live_in_namespace(namespace, CARD_KINDS)

    async def after_pass(self) -> None:
        """Publish the installation (and the card counts) when it changed since last published."""
        if not self._summary_due or self.inst is None:
            return
        data = self._installation_data()
        prev = self.state.get("installation", self.cluster)
        if prev is not None and prev.content_hash == data.content_hash:
            if prev.pending and prev.routing_key:
                self.emitter.emit(prev.routing_key, prev, prev.key)  # unconfirmed: publish it again
            else:
                self._summary_due = False
                return
        else:
            revision = self.state.next_revision("installation", self.cluster)
            data = data.model_copy(update={"revision": revision})
            record = self.emitter.record(
                "installation", self.cluster, CLUSTER_WIDE, data.content_hash, revision, data
            )
            self.emitter.emit(RoutingKeys.TEKTON_INSTALLATION, record, self.cluster)
        await self.emitter.flush()
        self._summary_due = False

    def _installation_data(self) -> TektonInstallationData:
        inst = self.inst
        assert inst is not None
        counts = {
            ns: n
            for ns in sorted(self.state.namespaces(CARD_KINDS))
            if (n := sum(not r.deleted for r in self.state.in_namespace(ns, "card")))
        }
        last, at = self._last_change if self._last_change else (None, None)
        data = TektonInstallationData(
            cluster=self.cluster,
            found=inst.found,
            reason=inst.reason,
            pipelines_version=inst.pipelines_version,
            triggers_version=inst.triggers_version,
            controller_namespace=inst.controller_namespace,
            detected_by=inst.detected_by,
            dashboard_url=inst.dashboard_url,
            pipelines_api=self.cache.served.get(PIPELINES.name),
            eventlisteners_api=self.cache.served.get(EVENTLISTENERS.name),
            cards=counts,
            last_change=last,
            last_change_at=at,
            content_hash="",
            revision=0,
        )
        content = data.model_dump(mode="json", exclude={"content_hash", "revision"})
        return data.model_copy(update={"content_hash": content_hash(content)})

    # --- snapshots -------------------------------------------------------------------------------

    def _scope_key(self, namespace: str) -> str:
        return f"tekton:{self.cluster}/{namespace}"

    def snapshot_namespaces(self) -> list[str]:
        return sorted(
            ns for ns in self.state.namespaces(CARD_KINDS) if self.state.live_in_namespace(ns, CARD_KINDS)
        )

    def snapshot_revision(self, namespace: str) -> int:
        record = self.state.get("tekton-snapshot", self._scope_key(namespace))
        return record.revision if record is not None else 0

    async def snapshot(self, namespace: str) -> None:
        """Every card of one namespace as published, with the revisions it reflects."""
        records = self.state.in_namespace(namespace, "card")
        key = self._scope_key(namespace)
        revision = self.state.next_revision("tekton-snapshot", key)
        data = TektonSnapshotData(
            cluster=self.cluster,
            namespace=namespace,
            cards=[TektonCardData.model_validate(r.data) for r in records if not r.deleted],
            revision=revision,
            card_revisions={r.key: r.revision for r in records},
        )
        record = self.emitter.record("tekton-snapshot", key, namespace, "", revision, data)
        await self.emitter.emit_snapshot(RoutingKeys.TEKTON_SNAPSHOT, record, TektonSnapshotData.split_fields)
        await self.emitter.flush()

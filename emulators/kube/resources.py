"""The resource types the emulator serves, and how to find one from a URL, a kind or a short name."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

EVENTS_GROUP = "events.kabanero.io"

_CR_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_SUB_VERBS = ("get", "patch", "update")


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served resource (a plural in one group/version)."""

    group: str
    """API group; "" for the core group."""
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    """Status is written only through `/status`; a write to the main resource keeps the stored status."""
    tracks_generation: bool = False
    """`metadata.generation` starts at 1 and is bumped on every non-metadata, non-status change."""
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = field(default=_CR_VERBS)
    also_served: tuple[str, ...] = ()
    """Other versions served from the same objects with conversion None: an object written in one
    version is read in any other with the same fields, only `apiVersion` differs. `version` is the
    storage version."""

    @property
    def served(self) -> tuple[str, ...]:
        return (self.version, *self.also_served)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def qualified(self) -> str:
        """`plural.group` as the API server writes it in error messages (`kabaneros.kabanero.io`)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def api_resource(self) -> list[dict[str, object]]:
        """Entries of an APIResourceList: the resource and, if any, its status subresource."""
        main: dict[str, object] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries: list[dict[str, object]] = [main]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": list(_SUB_VERBS),
                }
            )
        return entries


# kabanero-operator@0.6.0..0.9.2:deploy/crds/kabanero.io_kabaneros_crd.yaml: v1alpha1 served,
# v1alpha2 served and stored, no conversion stanza (None).
KABANEROS = ResourceType(
    group="kabanero.io",
    version="v1alpha2",
    plural="kabaneros",
    singular="kabanero",
    kind="Kabanero",
    status_subresource=True,
    tracks_generation=True,
    also_served=("v1alpha1",),
)
STACKS = ResourceType(
    group="kabanero.io",
    version="v1alpha2",
    plural="stacks",
    singular="stack",
    kind="Stack",
    status_subresource=True,
    tracks_generation=True,
)
EVENT_MEDIATORS = ResourceType(
    group=EVENTS_GROUP,
    version="v1alpha1",
    plural="eventmediators",
    singular="eventmediator",
    kind="EventMediator",
    status_subresource=True,
    tracks_generation=True,
)
EVENT_CONNECTIONS = ResourceType(
    group=EVENTS_GROUP,
    version="v1alpha1",
    plural="eventconnections",
    singular="eventconnections",
    kind="EventConnections",
    status_subresource=True,
    tracks_generation=True,
)
CONFIGMAPS = ResourceType(
    group="",
    version="v1",
    plural="configmaps",
    singular="configmap",
    kind="ConfigMap",
    short_names=("cm",),
)
NAMESPACES = ResourceType(
    group="",
    version="v1",
    plural="namespaces",
    singular="namespace",
    kind="Namespace",
    namespaced=False,
    short_names=("ns",),
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
)
LEASES = ResourceType(
    group="coordination.k8s.io",
    version="v1",
    plural="leases",
    singular="lease",
    kind="Lease",
)
# What finds a Tekton installation and its EventListeners' external addresses (docs/design.md, "Tekton
# in the kube emulator"): the controller Deployment's labels, the `el-<name>` Service, and the Route or
# Ingress in front of it.
SERVICES = ResourceType(
    group="",
    version="v1",
    plural="services",
    singular="service",
    kind="Service",
    short_names=("svc",),
    status_subresource=True,
    categories=("all",),
)
DEPLOYMENTS = ResourceType(
    group="apps",
    version="v1",
    plural="deployments",
    singular="deployment",
    kind="Deployment",
    short_names=("deploy",),
    status_subresource=True,
    tracks_generation=True,
    categories=("all",),
)
INGRESSES = ResourceType(
    group="networking.k8s.io",
    version="v1",
    plural="ingresses",
    singular="ingress",
    kind="Ingress",
    short_names=("ing",),
    status_subresource=True,
    tracks_generation=True,
)
ROUTES = ResourceType(
    group="route.openshift.io",
    version="v1",
    plural="routes",
    singular="route",
    kind="Route",
    status_subresource=True,
    categories=("all",),
)
CUSTOM_RESOURCE_DEFINITIONS = ResourceType(
    group="apiextensions.k8s.io",
    version="v1",
    plural="customresourcedefinitions",
    singular="customresourcedefinition",
    kind="CustomResourceDefinition",
    namespaced=False,
    short_names=("crd", "crds"),
    status_subresource=True,
    tracks_generation=True,
    categories=("api-extensions",),
)

KABANERO_RESOURCES: tuple[ResourceType, ...] = (KABANEROS, STACKS, EVENT_MEDIATORS, EVENT_CONNECTIONS)
"""The Kabanero 0.9.2 CRDs, served from the start unless an emulator is made without them."""
BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    CONFIGMAPS,
    NAMESPACES,
    LEASES,
    SERVICES,
    DEPLOYMENTS,
    INGRESSES,
    ROUTES,
    CUSTOM_RESOURCE_DEFINITIONS,
)
DEFAULT_RESOURCES: tuple[ResourceType, ...] = (*KABANERO_RESOURCES, *BUILTIN_RESOURCES)

_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def kube_version_key(version: str) -> tuple[int, int, int, str]:
    """Sort key of Kubernetes' version priority (GA > beta > alpha, higher numbers first, then other names
    alphabetically): the API server lists a CRD group's versions in this order and prefers the first
    (apiextensions-apiserver's discovery controller, `sortGroupDiscoveryByKubeAwareVersion`)."""
    match = _VERSION_RE.match(version)
    if match is None:
        return (3, 0, 0, version)
    major, stage, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -int(major), -int(minor or 0), version)


class Registry:
    """Lookup of resource types by URL parts, by apiVersion/kind, or by a user-facing name."""

    def __init__(self, resources: Iterable[ResourceType] = DEFAULT_RESOURCES) -> None:
        self.resources: tuple[ResourceType, ...] = tuple(resources)

    def add(self, rt: ResourceType) -> None:
        """Serve `rt` (a CRD was established)."""
        self.resources = (*self.resources, rt)

    def remove(self, rt: ResourceType) -> None:
        """Stop serving `rt` (its CRD was deleted or changed)."""
        self.resources = tuple(r for r in self.resources if r != rt)

    def serving(self, group: str, plural: str) -> ResourceType | None:
        """The type served as `plural` in `group`, in any version."""
        return next((rt for rt in self.resources if (rt.group, rt.plural) == (group, plural)), None)

    def by_path(self, group: str, version: str, plural: str) -> ResourceType | None:
        for rt in self.resources:
            if (rt.group, rt.plural) == (group, plural) and version in rt.served:
                return rt
        return None

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self.resources:
            if rt.group == group and rt.kind == kind and version in rt.served:
                return rt
        return None

    def resolve(self, name: str | ResourceType) -> ResourceType:
        """Find a type by plural, singular, kind, short name, or `plural.group` (for test helpers)."""
        if isinstance(name, ResourceType):
            return name
        lowered = name.lower()
        for rt in self.resources:
            names = {rt.plural, rt.singular, rt.kind.lower(), rt.qualified, *rt.short_names}
            if lowered in names:
                return rt
        raise KeyError(f"unknown resource type {name!r}")

    def groups(self) -> list[str]:
        """Non-core groups in registration order."""
        seen: list[str] = []
        for rt in self.resources:
            if rt.group and rt.group not in seen:
                seen.append(rt.group)
        return seen

    def versions(self, group: str) -> list[str]:
        """Served versions of a group in Kubernetes' priority order (the first is the preferred one)."""
        served = {version for rt in self.resources if rt.group == group for version in rt.served}
        return sorted(served, key=kube_version_key)

    def group_versions(self) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        for rt in self.resources:
            for version in rt.served:
                if (rt.group, version) not in seen:
                    seen.append((rt.group, version))
        return seen

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self.resources if rt.group == group and version in rt.served]

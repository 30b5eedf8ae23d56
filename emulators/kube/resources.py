"""The resource types the emulator serves, and how to find one from a URL, a kind or a short name."""

from __future__ import annotations

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

DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    KABANEROS,
    STACKS,
    EVENT_MEDIATORS,
    EVENT_CONNECTIONS,
    CONFIGMAPS,
    NAMESPACES,
    LEASES,
)


class Registry:
    """Lookup of resource types by URL parts, by apiVersion/kind, or by a user-facing name."""

    def __init__(self, resources: Iterable[ResourceType] = DEFAULT_RESOURCES) -> None:
        self.resources: tuple[ResourceType, ...] = tuple(resources)

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
        """Served versions of a group, storage versions first (the first is the preferred one)."""
        seen: list[str] = []
        for rt in self.resources:
            if rt.group == group and rt.version not in seen:
                seen.append(rt.version)
        for rt in self.resources:
            for version in rt.also_served:
                if rt.group == group and version not in seen:
                    seen.append(version)
        return seen

    def group_versions(self) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        for rt in self.resources:
            for version in rt.served:
                if (rt.group, version) not in seen:
                    seen.append((rt.group, version))
        return seen

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self.resources if rt.group == group and version in rt.served]

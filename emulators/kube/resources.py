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


KABANEROS = ResourceType(
    group="kabanero.io",
    version="v1alpha2",
    plural="kabaneros",
    singular="kabanero",
    kind="Kabanero",
    status_subresource=True,
    tracks_generation=True,
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
            if (rt.group, rt.version, rt.plural) == (group, version, plural):
                return rt
        return None

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for rt in self.resources:
            if rt.api_version == api_version and rt.kind == kind:
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
        seen: list[str] = []
        for rt in self.resources:
            if rt.group == group and rt.version not in seen:
                seen.append(rt.version)
        return seen

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self.resources if rt.group == group and rt.version == version]

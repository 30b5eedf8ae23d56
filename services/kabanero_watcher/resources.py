"""What a family watches: resource types, and the raw objects the watch loops keep of them.

A family (Kabanero, Tekton: :mod:`family`) names its :class:`ResourceSpec` s; one
:class:`~services.kabanero_watcher.watching.ResourceWatcher` per spec and scope lists and watches
it, feeding the family's :class:`ObjectCache`. The cache only stores; what the objects mean is the
family's derivation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name); the namespace is "" for a cluster-scoped object."""


@dataclass(frozen=True)
class ResourceSpec:
    """One watched resource type. ``group`` "" is the core API; ``field_selector`` and
    ``label_selector`` narrow the list/watch.

    ``alternatives`` are further (group, version) pairs that serve the same kind in other releases
    (Tekton's EventListeners moved from ``tekton.dev`` to ``triggers.tekton.dev``): the watcher asks
    discovery which one the cluster serves, preferring the cluster's preferred version, then the
    order given. ``namespaces`` pins the scopes (an installation's objects live in known namespaces,
    whatever ``WATCH_NAMESPACES`` says); ``alias`` tells two watches of one plural apart."""

    group: str
    version: str
    plural: str
    optional: bool
    field_selector: str | None = None
    label_selector: str | None = None
    cluster_scoped: bool = False
    alternatives: tuple[tuple[str, str], ...] = ()
    namespaces: tuple[str, ...] | None = None
    alias: str | None = None

    @property
    def name(self) -> str:
        if self.alias:
            return self.alias
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def candidates(self) -> tuple[tuple[str, str], ...]:
        """Every (group, version) that may serve this kind, in order of preference."""
        return ((self.group, self.version), *self.alternatives)


class ObjectCache:
    """Raw objects per resource type and namespace, as the last list and the events since left them.

    ``replace``/``apply``/``set_absent`` return the namespaces they touched, which the session
    marks for reconcile. Objects are indexed by namespace, so deriving one namespace never scans
    the others. ``served`` records the group/version each type was last listed in."""

    def __init__(self, resources: Iterable[ResourceSpec]) -> None:
        self.resources = tuple(resources)
        self._objects: dict[str, dict[str, dict[str, dict[str, Any]]]] = {r.name: {} for r in self.resources}
        self.absent: set[str] = set()
        self.served: dict[str, str] = {}

    def namespaces(self) -> set[str]:
        return {ns for by_ns in self._objects.values() for ns, objs in by_ns.items() if ns and objs}

    def count(self, resource: ResourceSpec) -> int:
        return sum(len(objs) for objs in self._objects[resource.name].values())

    def key_of(self, resource: ResourceSpec, obj: Mapping[str, Any]) -> Key | None:
        """(namespace, name), or None (logged) for an object without them."""
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        name = meta.get("name")
        namespace = "" if resource.cluster_scoped else meta.get("namespace")
        if (
            isinstance(name, str)
            and name
            and isinstance(namespace, str)
            and (namespace or resource.cluster_scoped)
        ):
            return namespace, name
        log.warning("skipping %s object without namespace/name", resource.name)
        return None

    def replace(self, resource: ResourceSpec, scope: str | None, items: Iterable[dict[str, Any]]) -> set[str]:
        """Install a fresh list (of one namespace, or all when ``scope`` is None); returns touched namespaces."""
        by_ns = self._objects[resource.name]
        touched = set(by_ns) if scope is None else ({scope} if scope in by_ns else set())
        if scope is None:
            by_ns.clear()
        else:
            by_ns.pop(scope, None)
        for item in items:
            key = self.key_of(resource, item)
            if key is not None:
                by_ns.setdefault(key[0], {})[key[1]] = item
                touched.add(key[0])
        self.absent.discard(resource.name)
        return self.touched(resource, touched)

    def set_absent(self, resource: ResourceSpec, scope: str | None) -> set[str]:
        touched = self.replace(resource, scope, ())
        self.absent.add(resource.name)
        self.served.pop(resource.name, None)
        return touched

    def apply(self, resource: ResourceSpec, event_type: str, obj: dict[str, Any]) -> set[str]:
        """Apply one watch event; returns the namespaces it concerns."""
        key = self.key_of(resource, obj)
        if key is None:
            return set()
        by_ns = self._objects[resource.name]
        if event_type == "DELETED":
            objs = by_ns.get(key[0])
            if objs is not None:
                objs.pop(key[1], None)
                if not objs:
                    del by_ns[key[0]]
        else:
            by_ns.setdefault(key[0], {})[key[1]] = obj
        return self.touched(resource, {key[0]})

    def touched(self, resource: ResourceSpec, namespaces: set[str]) -> set[str]:
        """The namespaces to reconcile after ``resource`` changed in ``namespaces`` (a family whose
        derivation reads cluster-wide objects widens this)."""
        return namespaces

    def all_objects(self, resource: ResourceSpec) -> list[dict[str, Any]]:
        """Every object of a type, by namespace then name (for the few cluster-wide facts)."""
        by_ns = self._objects[resource.name]
        return [by_ns[ns][name] for ns in sorted(by_ns) for name in sorted(by_ns[ns])]

    def in_namespace(self, resource: ResourceSpec, namespace: str) -> list[dict[str, Any]]:
        objs = self._objects[resource.name].get(namespace, {})
        return [objs[name] for name in sorted(objs)]

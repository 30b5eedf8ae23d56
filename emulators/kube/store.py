"""Objects, the global resourceVersion counter, per-type change history and watch subscriptions.

Everything here is synchronous and runs on the event loop thread, so a change, its history entry and its
delivery to every subscription happen atomically; a watch that starts from resourceVersion X gets exactly
the retained changes after X and then everything that follows, with no gap and no duplicate.

Semantics (as the real API server, unless noted):

- one global, strictly increasing resourceVersion (a decimal string); every committed change bumps it;
  an update that changes nothing commits nothing (same resourceVersion, no event);
- `metadata.generation` (custom resources only) starts at 1 and is bumped when anything outside
  `metadata` and `status` changes; with a status subresource, writes to the main resource keep the stored
  status and `/status` writes change only the status;
- optimistic concurrency: a write carrying a `metadata.resourceVersion` different from the stored one fails
  with 409 Conflict (writes without one are unconditional);
- delete of an object with finalizers sets `deletionTimestamp` (MODIFIED; like the API server this also
  bumps `generation` when the type tracks it) and keeps it; once the last
  finalizer is removed the object is really deleted (DELETED carrying the final state);
- history: the last `history_window` changes per resource type are kept; a watch or an exact list from an
  older resourceVersion fails with 410 Expired; `compact()` drops all history at once;
- custom resources are validated against their CRD's `openAPIV3Schema` (`schemas.py`; the bundled
  Kabanero 0.9.2 CRDs by default) at the version written, on create, update, patch and status writes:
  422 `Invalid` with the API server's causes. `validate=False` on the direct helpers stores an object
  the API server would refuse (as one stored before its CRD had a schema), for robustness tests;
- a type served in several versions (`ResourceType.also_served`, conversion None) keeps one object;
  it is stored with the storage version's `apiVersion` and the HTTP layer answers in the version asked;
- a CustomResourceDefinition makes its resource served when written (`crd.py`) and unserved when
  deleted, after its objects are deleted (DELETED events, then its open watches end); a change of its
  versions or names ends the open watches of the resource and keeps the objects;
- a namespaced object created in a namespace that does not exist is a 404 NotFound Status naming the
  namespace, as on a real API server. Deviation, opt-in only (`auto_namespaces=True`, CLI
  `--auto-namespaces`): the Namespace is created implicitly. Deleting a namespace does not cascade.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import math
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from . import crd, errors
from .errors import ApiError
from .patching import apply_patch
from .resources import CUSTOM_RESOURCE_DEFINITIONS, NAMESPACES, Registry, ResourceType
from .schemas import Schemas
from .selectors import Selector

Obj = dict[str, Any]
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one object."""

    rv: int
    type: ChangeType
    obj: Obj
    """The new state (for DELETED: the final state, carrying the deletion's resourceVersion)."""
    old: Obj | None
    """The state before the change (None for ADDED)."""


@dataclass(slots=True, eq=False)
class Subscription:
    """One open watch: its filter, its pending events and the fault-injection controls."""

    rt: ResourceType
    namespace: str | None
    selector: Selector
    pending: deque[tuple[str, Obj]] = field(default_factory=deque)
    signal: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever something happens that the stream should look at (event, drop, stall, release)."""
    drop_mode: Literal["abort", "close", "drain"] | None = None
    """"abort"/"close": end the stream now; "drain": end it once the pending events are sent."""
    stall_until: float | None = None
    """`time.monotonic()` deadline of an injected stall (math.inf: until released)."""

    def offer(self, change: Change) -> None:
        """Queue the change translated for this subscription's filter, if it concerns it."""
        translated = self.translate(change)
        if translated is not None:
            self.pending.append(translated)
            self.signal.set()

    def _concerns(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj.get("metadata", {}).get("namespace") != self.namespace:
            return False
        return self.selector.matches(obj)

    def translate(self, change: Change) -> tuple[str, Obj] | None:
        """An object leaving (entering) the selection is DELETED (ADDED) for this watch, as upstream."""
        now_in = self._concerns(change.obj)
        if change.type == "DELETED":
            return ("DELETED", change.obj) if now_in else None
        was_in = change.type == "MODIFIED" and self._concerns(change.old)
        if now_in and was_in:
            return ("MODIFIED", change.obj)
        if now_in:
            return ("ADDED", change.obj)
        if was_in:
            return ("DELETED", change.obj)
        return None

    def drop(self, mode: Literal["abort", "close", "drain"]) -> None:
        self.drop_mode = mode
        self.signal.set()

    def stall(self, seconds: float | None) -> None:
        self.stall_until = math.inf if seconds is None else time.monotonic() + seconds
        self.signal.set()

    def release(self) -> None:
        self.stall_until = None
        self.signal.set()


def _encode_continue(rv: int, after: tuple[str, str]) -> str:
    raw = json.dumps({"rv": rv, "after": list(after)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["after"][0]), str(data["after"][1]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from exc


def parse_rv(value: str | None) -> int | None:
    """None for "unset" ("" or absent); "0" is returned as 0 ("any")."""
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise errors.bad_request(f"invalid resource version {value!r}")
    return int(value)


def _meta(obj: Any) -> Obj:
    if not isinstance(obj, dict):
        raise errors.bad_request("the object must be a JSON object")
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be a JSON object")
    return meta


def _spec_slice(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """In-memory object store with Kubernetes write semantics; see the module docstring."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        history_window: int = 1000,
        auto_namespaces: bool = False,
        schemas: Schemas | None = None,
        crds: Iterable[Obj] = (),
    ) -> None:
        """`crds`: CustomResourceDefinitions (v1) installed at start and again at every `reset()`."""
        if history_window < 1:
            raise ValueError("history_window must be >= 1")
        self.registry = registry or Registry()
        self.schemas = Schemas.bundled() if schemas is None else schemas
        self._boot_crds = [copy.deepcopy(crd.to_v1(doc)) for doc in crds if crd.is_crd(doc)]
        self._custom: dict[str, ResourceType] = {}
        """The served resource of each established CRD, by CRD name."""
        self.history_window = history_window
        self.auto_namespaces = auto_namespaces
        self.subscriptions: set[Subscription] = set()
        self._rv = 0
        self._objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {}
        self._history: dict[ResourceType, deque[Change]] = {}
        self._floor: dict[ResourceType, int] = {}
        self.reset()

    # ------------------------------------------------------------------ bookkeeping

    @property
    def resource_version(self) -> int:
        """The current (latest committed) global resourceVersion."""
        return self._rv

    def reset(self) -> None:
        """Forget all objects and history (resourceVersions keep increasing) and recreate the default
        namespaces and the CRDs given at construction. Open watches are not touched here (see
        `Faults.reset`)."""
        for rt in self._custom.values():
            self.registry.remove(rt)
            self.schemas.replace(rt.group, rt.plural, {})
        self._custom = {}
        self._objects = {rt: {} for rt in self.registry.resources}
        self._history = {rt: deque(maxlen=self.history_window) for rt in self.registry.resources}
        self._floor = {rt: self._rv for rt in self.registry.resources}
        for name in INITIAL_NAMESPACES:
            self._create_namespace(name)
        for definition in self._boot_crds:
            self.create(copy.deepcopy(definition))

    def compact(self) -> int:
        """Drop every retained change: a watch from any resourceVersion older than the current one gets
        410. Returns the current resourceVersion."""
        for rt in self.registry.resources:
            self._history[rt].clear()
            self._floor[rt] = self._rv
        return self._rv

    def oldest_watchable(self, rt: ResourceType) -> int:
        """The oldest resourceVersion a watch of `rt` can start from."""
        return self._floor[rt]

    def counts(self) -> dict[str, int]:
        return {rt.qualified: len(self._objects[rt]) for rt in self.registry.resources}

    def history_sizes(self) -> dict[str, int]:
        return {rt.qualified: len(self._history[rt]) for rt in self.registry.resources}

    def _commit(self, rt: ResourceType, kind: ChangeType, obj: Obj, old: Obj | None) -> Obj:
        if rt == CUSTOM_RESOURCE_DEFINITIONS and kind == "DELETED":
            self._uninstall(obj["metadata"]["name"])
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if kind == "DELETED":
            self._objects[rt].pop(key, None)
        else:
            self._objects[rt][key] = obj
        snapshot = copy.deepcopy(obj)
        change = Change(self._rv, kind, snapshot, old)
        history = self._history[rt]
        if len(history) == history.maxlen:
            self._floor[rt] = history[0].rv
        history.append(change)
        for sub in list(self.subscriptions):
            if sub.rt == rt:
                sub.offer(change)
        if rt == CUSTOM_RESOURCE_DEFINITIONS and kind != "DELETED":
            self._install(obj)
        return copy.deepcopy(obj)

    # ------------------------------------------------------------------ CustomResourceDefinitions

    def _check_crd(self, definition: Obj) -> None:
        """422 for a CRD the API server refuses; 409 for one naming a resource served without a CRD."""
        crd.check(definition)
        spec = definition["spec"]
        served = self.registry.serving(spec["group"], spec["names"]["plural"])
        if served is not None and self._custom.get(definition["metadata"]["name"]) != served:
            raise errors.already_exists(CUSTOM_RESOURCE_DEFINITIONS, definition["metadata"]["name"])
        crd.accepted(definition)

    def _install(self, definition: Obj) -> None:
        """Serve the resource of a written CRD (or follow a change of its versions or names)."""
        name = definition["metadata"]["name"]
        new = crd.resource_type(definition)
        old = self._custom.get(name)
        self.schemas.replace(new.group, new.plural, crd.schemas(definition))
        if old == new:
            return
        if old is None:
            self._objects[new], self._history[new] = {}, deque(maxlen=self.history_window)
            self._floor[new] = self._rv
        else:
            self._end_watches(old, "close")
            self.registry.remove(old)
            self._objects[new], self._history[new] = self._objects.pop(old), self._history.pop(old)
            self._floor[new] = self._floor.pop(old)
        self.registry.add(new)
        self._custom[name] = new

    def _uninstall(self, name: str) -> None:
        """Delete the objects of a deleted CRD (each a DELETED event), then stop serving its resource."""
        rt = self._custom.pop(name, None)
        if rt is None:
            return
        for _, obj in sorted(self._objects[rt].items()):
            self._commit(rt, "DELETED", copy.deepcopy(obj), obj)
        self._end_watches(rt, "drain")
        self.registry.remove(rt)
        del self._objects[rt], self._history[rt], self._floor[rt]
        self.schemas.replace(rt.group, rt.plural, {})

    def _end_watches(self, rt: ResourceType, mode: Literal["close", "drain"]) -> None:
        for sub in list(self.subscriptions):
            if sub.rt == rt:
                sub.drop(mode)

    def installed_crds(self) -> list[str]:
        """Names of the CRDs whose resources are served now."""
        return sorted(self._custom)

    def install_crds(self, definitions: Iterable[Obj]) -> list[str]:
        """Create or replace each CRD (v1, or v1beta1 converted as the API server does). Returns their names."""
        return [self.apply(crd.to_v1(copy.deepcopy(d)))["metadata"]["name"] for d in definitions]

    def uninstall_crds(self, names: Iterable[str]) -> list[str]:
        """Delete the named CRDs that exist (and so their objects). Returns the names deleted."""
        deleted = []
        for name in names:
            if ("", name) in self._objects[CUSTOM_RESOURCE_DEFINITIONS]:
                self.delete(CUSTOM_RESOURCE_DEFINITIONS, None, name)
                deleted.append(name)
        return deleted

    def _resolve(self, resource: str | ResourceType | None, obj: Obj | None = None) -> ResourceType:
        if resource is not None:
            return self.registry.resolve(resource)
        if obj is not None:
            rt = self.registry.by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
            if rt is not None:
                return rt
            raise errors.bad_request(
                f"no resource type for apiVersion={obj.get('apiVersion')!r} kind={obj.get('kind')!r}"
            )
        raise ValueError("resource type or object with apiVersion/kind required")

    @staticmethod
    def _version(rt: ResourceType, obj: Any, version: str | None) -> str:
        """The version a write is made in: the one asked, else the object's own if served, else storage."""
        if version is not None:
            return version
        api_version = obj.get("apiVersion") if isinstance(obj, dict) else None
        written = str(api_version or "").rpartition("/")[2]
        return written if written in rt.served else rt.version

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        if rt.namespaced:
            return (namespace or "default", name)
        return ("", name)

    def _stored(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._objects[rt].get(self._key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    # ------------------------------------------------------------------ reads

    def get(self, resource: str | ResourceType, namespace: str | None, name: str) -> Obj:
        rt = self._resolve(resource)
        return copy.deepcopy(self._stored(rt, namespace, name))

    def _snapshot(self, rt: ResourceType, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects of `rt` as of resourceVersion `rv` (rolled back through the retained history)."""
        if rv < self._floor[rt]:
            raise errors.expired(rv, self._floor[rt])
        objects = dict(self._objects[rt])
        for change in reversed(self._history[rt]):
            if change.rv <= rv:
                break
            meta = change.obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if change.old is None:
                objects.pop(key, None)
            else:
                objects[key] = change.old
        return objects

    def list_objects(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        selector: Selector | None = None,
    ) -> list[Obj]:
        """Current objects, sorted by (namespace, name)."""
        rt = self._resolve(resource)
        selector = selector or Selector()
        return [
            copy.deepcopy(obj)
            for key, obj in sorted(self._objects[rt].items())
            if (namespace is None or key[0] == namespace) and selector.matches(obj)
        ]

    def list_body(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        selector: Selector | None = None,
        *,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Obj:
        """A `<Kind>List` body as the list endpoint returns it."""
        rt = self._resolve(resource)
        selector = selector or Selector()
        after: tuple[str, str] | None = None
        requested = parse_rv(resource_version)
        if continue_token:
            at, after = _decode_continue(continue_token)
            if at < self._floor[rt]:
                raise errors.gone_continue()
            objects = self._snapshot(rt, at)
        elif requested is None or requested == 0:
            at, objects = self._rv, self._objects[rt]
        elif requested > self._rv:
            raise ApiError(504, "Timeout", f"Too large resource version: {requested}, current: {self._rv}")
        elif resource_version_match == "Exact":
            at, objects = requested, self._snapshot(rt, requested)
        else:  # NotOlderThan (also the legacy meaning of a bare resourceVersion)
            at, objects = self._rv, self._objects[rt]
        keys = [
            key
            for key, obj in sorted(objects.items())
            if (namespace is None or key[0] == namespace)
            and (after is None or key > after)
            and selector.matches(obj)
        ]
        metadata: Obj = {"resourceVersion": str(at)}
        if limit is not None and limit > 0 and len(keys) > limit:
            metadata["continue"] = _encode_continue(at, keys[limit - 1])
            metadata["remainingItemCount"] = len(keys) - limit
            keys = keys[:limit]
        return {
            "apiVersion": rt.api_version,
            "kind": rt.list_kind,
            "metadata": metadata,
            "items": [copy.deepcopy(objects[key]) for key in keys],
        }

    # ------------------------------------------------------------------ writes

    def _create_namespace(self, name: str) -> Obj:
        obj: Obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now_rfc3339(),
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        return self._commit(NAMESPACES, "ADDED", obj, None)

    def create(
        self,
        obj: Obj,
        *,
        resource: str | ResourceType | None = None,
        namespace: str | None = None,
        validate: bool = True,
        version: str | None = None,
    ) -> Obj:
        """Create `obj` (its type from `resource` or from apiVersion/kind). Namespace: `namespace`,
        else `metadata.namespace`, else "default". Status is kept as given (the HTTP layer drops it
        for types with a status subresource, as the API server does)."""
        rt = self._resolve(resource, obj)
        written_in = self._version(rt, obj, version)
        new = copy.deepcopy(obj)
        meta = _meta(new)
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
        if not isinstance(name, str) or not name:
            raise errors.invalid(rt, "", "metadata.name", "Required value: name or generateName is required")
        if len(name) > 253 or not _NAME_RE.match(name):
            raise errors.invalid(
                rt,
                name,
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            ns = namespace or body_ns or "default"
            if not self._objects[NAMESPACES].get(("", ns)):
                if not self.auto_namespaces:
                    raise errors.not_found(NAMESPACES, ns)
                self._create_namespace(ns)
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
            ns = ""
        if (ns, name) in self._objects[rt]:
            raise errors.already_exists(rt, name)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        meta["name"] = name
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "generation"):
            meta.pop(transient, None)
        if rt.tracks_generation:
            meta["generation"] = 1
        self._prepare_for_create(rt, new)
        if validate:
            self.schemas.check(rt, written_in, new)
        return self._commit(rt, "ADDED", new, None)

    def _prepare_for_create(self, rt: ResourceType, new: Obj) -> None:
        """What the API server's create strategies add: a Namespace's "kubernetes" finalizer and Active
        phase; a CRD's checks, defaulted names and status."""
        if rt is NAMESPACES:
            if not isinstance(new.get("spec"), dict) or not new["spec"].get("finalizers"):
                new["spec"] = {**(new.get("spec") or {}), "finalizers": ["kubernetes"]}
            new["status"] = {"phase": "Active"}
        if rt == CUSTOM_RESOURCE_DEFINITIONS:
            self._check_crd(new)

    def _write(
        self,
        rt: ResourceType,
        old: Obj,
        proposed: Any,
        subresource: str | None,
        *,
        validate: bool = True,
        version: str | None = None,
    ) -> Obj:
        """Validate and commit `proposed` as the next state of `old` (update and patch share this)."""
        written_in = self._version(rt, proposed, version)
        meta = _meta(proposed)
        old_meta = old["metadata"]
        name = old_meta["name"]
        if meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        sent_rv = meta.get("resourceVersion")
        if sent_rv not in (None, "") and str(sent_rv) != old_meta["resourceVersion"]:
            raise errors.conflict(rt, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in proposed:
                new["status"] = copy.deepcopy(proposed["status"])
            else:
                new.pop("status", None)
        elif subresource is None:
            new = copy.deepcopy(proposed)
            new_meta = new["metadata"]
            for kept in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ):
                if kept in old_meta:
                    new_meta[kept] = old_meta[kept]
                else:
                    new_meta.pop(kept, None)
            new_meta["name"] = name
            if rt.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if rt.tracks_generation and _spec_slice(new) != _spec_slice(old):
                new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        else:
            raise errors.no_such_resource()
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if rt == CUSTOM_RESOURCE_DEFINITIONS and subresource is None:
            self._check_crd(new)
        if new == old:
            return copy.deepcopy(old)
        if validate:
            self.schemas.check(rt, written_in, new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._commit(rt, "DELETED", new, old)
        return self._commit(rt, "MODIFIED", new, old)

    def update(
        self,
        obj: Obj,
        *,
        resource: str | ResourceType | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        validate: bool = True,
        version: str | None = None,
    ) -> Obj:
        """PUT semantics: replace the object (or only its status with `subresource="status"`)."""
        rt = self._resolve(resource, obj)
        meta = _meta(obj)
        name = name or meta.get("name")
        if not isinstance(name, str) or not name:
            raise errors.invalid(rt, "", "metadata.name", "Required value: name is required")
        if rt.namespaced and namespace and meta.get("namespace") not in (None, namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        old = self._stored(rt, namespace or meta.get("namespace"), name)
        return self._write(rt, old, copy.deepcopy(obj), subresource, validate=validate, version=version)

    def patch(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str = "application/merge-patch+json",
        *,
        subresource: str | None = None,
        validate: bool = True,
        version: str | None = None,
    ) -> Obj:
        rt = self._resolve(resource)
        old = self._stored(rt, namespace, name)
        proposed = apply_patch(copy.deepcopy(old), patch, content_type)
        return self._write(rt, old, proposed, subresource, validate=validate, version=version or rt.version)

    def delete(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        *,
        precondition_rv: str | None = None,
        precondition_uid: str | None = None,
    ) -> Obj:
        """Delete, or with finalizers only mark as deleting. Returns the object as it is now."""
        rt = self._resolve(resource)
        old = self._stored(rt, namespace, name)
        meta = old["metadata"]
        if precondition_uid and precondition_uid != meta["uid"]:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {precondition_uid}, UID in object meta: {meta['uid']}",
            )
        if precondition_rv and precondition_rv != meta["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: ResourceVersion in precondition: {precondition_rv}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(old)
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            if "generation" in new["metadata"]:  # as the API server's markAsDeleting()
                new["metadata"]["generation"] += 1
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(rt, "MODIFIED", new, old)
        return self._commit(rt, "DELETED", copy.deepcopy(old), old)

    # ------------------------------------------------------------------ test conveniences

    def apply(self, obj: Obj, *, resource: str | ResourceType | None = None, validate: bool = True) -> Obj:
        """Create `obj`, or replace the stored one unconditionally (keeping uid, creationTimestamp,
        generation rules and, unless `obj` has one, the status). A `status` in `obj` is written through
        the status subresource (so it never bumps generation)."""
        rt = self._resolve(resource, obj)
        meta = _meta(obj)
        namespace = meta.get("namespace") if rt.namespaced else None
        key = self._key(rt, namespace, str(meta.get("name", "")))
        if key not in self._objects[rt]:
            return self.create(obj, resource=rt, validate=validate)
        body = copy.deepcopy(obj)
        body["metadata"].pop("resourceVersion", None)
        result = self.update(body, resource=rt, namespace=key[0] or None, validate=validate)
        if rt.status_subresource and "status" in obj:
            result = self.update(
                {"apiVersion": obj.get("apiVersion"), "metadata": {"name": key[1]}, "status": obj["status"]},
                resource=rt,
                namespace=key[0] or None,
                subresource="status",
                validate=validate,
            )
        return result

    def patch_status(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        status: Any,
        *,
        validate: bool = True,
    ) -> Obj:
        """Replace the status through the status subresource (never bumps generation)."""
        rt = self._resolve(resource)
        stored = self._stored(rt, namespace, name)
        proposed = copy.deepcopy(stored)
        proposed["status"] = copy.deepcopy(status)
        return self._write(
            rt, stored, proposed, "status" if rt.status_subresource else None, validate=validate
        )

    def remove_finalizers(self, resource: str | ResourceType, namespace: str | None, name: str) -> Obj:
        """Clear `metadata.finalizers` (completing a pending delete), as a controller would; not
        validated, so an object stored with `validate=False` can still go away."""
        return self.patch(resource, namespace, name, {"metadata": {"finalizers": None}}, validate=False)

    # ------------------------------------------------------------------ watches

    def watch(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        selector: Selector | None = None,
        resource_version: str | None = None,
    ) -> Subscription:
        """Open a subscription. Unset or "0": synthetic ADDED for the current objects first. Otherwise
        the retained changes after that resourceVersion (410 Expired if some were dropped)."""
        rt = self._resolve(resource)
        sub = Subscription(rt, namespace, selector or Selector())
        since = parse_rv(resource_version)
        if not since:
            for _, obj in sorted(self._objects[rt].items()):
                if sub._concerns(obj):
                    sub.pending.append(("ADDED", copy.deepcopy(obj)))
        else:
            if since < self._floor[rt]:
                raise errors.expired(since, self._floor[rt])
            for change in self._history[rt]:
                if change.rv > since and (translated := sub.translate(change)) is not None:
                    sub.pending.append(translated)
        if sub.pending:
            sub.signal.set()
        self.subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

"""List-then-watch of one resource type (docs/reference/kubernetes-watch.md §1), feeding the cluster cache.

- LIST gives the collection resourceVersion; WATCH resumes from the last RV seen (events and
  BOOKMARKs), with a new ``Watch`` per connect (an exception closes a ``Watch`` for good).
- 410 Gone (HTTP or ERROR event) means the history is lost: re-LIST and let the reconciler diff
  the fresh list against the published state (that is where missed creates/updates/deletes come
  from). The RV is never silently reset.
- ``asyncio.timeout`` re-armed on every event turns a silently stalled stream into a reconnect.
- A server-side ``timeoutSeconds`` ends streams normally; payload errors and other transport
  failures reconnect from the last RV with backoff.
- Optional CRDs answering 404 are treated as absent (no objects) and re-probed periodically. A type
  that was listed before must answer 404 twice, one re-probe interval apart, before its objects are
  dropped: a lone 404 (an API server whose CRD handlers are not ready yet) is not "every trigger was
  deleted".
- Anything else that escapes a connection (e.g. the client's bare ``Exception`` on a malformed event
  line) is logged and retried with backoff: it never ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from services.kabanero_watcher.kube import (
    ApiClient,
    ApiException,
    ApisApi,
    CoreV1Api,
    CustomObjectsApi,
    Watch,
)
from services.kabanero_watcher.resources import ObjectCache, ResourceSpec
from services.kabanero_watcher.settings import Settings
from shared.backoff import Backoff

log = logging.getLogger(__name__)


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "kotc_watcher_watch_events_total",
            "watch events received",
            ["resource", "type"],
            registry=registry,
        )
        self.relists = Counter(
            "kotc_watcher_relists_total", "LIST calls", ["resource", "reason"], registry=registry
        )
        self.reconnects = Counter(
            "kotc_watcher_reconnects_total", "watch reconnects", ["resource", "reason"], registry=registry
        )


class ResourceWatcher:
    """Keeps the cache's view of one resource type (in one namespace, or all) up to date."""

    def __init__(
        self,
        *,
        api: CustomObjectsApi,
        resource: ResourceSpec,
        namespace: str | None,
        cache: ObjectCache,
        settings: Settings,
        on_change: Callable[[set[str]], None],
        on_relist: Callable[[], None],
        metrics: WatchMetrics | None = None,
    ) -> None:
        self.api = api
        # The ApiClient the CustomObjectsApi wraps (undeclared in its stubs): core types use it too.
        self._api_client: ApiClient | None = getattr(api, "api_client", None)
        self.resource = resource
        self.namespace = namespace
        self.cache = cache
        self.settings = settings
        self._on_change = on_change
        self._on_relist = on_relist
        self._metrics = metrics
        self.synced = asyncio.Event()
        self.last_alive = time.monotonic()
        self.rv: str | None = None
        self.lists = 0
        # Listed successfully since the last time it was declared absent.
        self._present = False
        # A 404 was seen after a successful list; one more (after a re-probe interval) confirms it.
        self.absence_suspected = False
        self.name = resource.name + (f"@{namespace}" if namespace else "")
        self._backoff = Backoff(settings.reconnect_backoff_s, settings.reconnect_backoff_max_s)
        self._reason = "initial"  # why the next connection lists again ("resume": it does not)
        # The (group, version) the cluster serves this kind in (resolved by discovery on each list).
        self.served: tuple[str, str] = (resource.group, resource.version)
        # Why the last connection failed (None once a list or stream worked): /readyz says it.
        self.last_error: str | None = None

    def _alive(self) -> None:
        self.last_alive = time.monotonic()

    def _count(self, kind: str, resource: str, reason: str) -> None:
        if self._metrics is not None:
            getattr(self._metrics, kind).labels(resource, reason).inc()

    def _list_fn(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """The list function, its positional arguments and its selector keywords. Core types
        (ConfigMaps) go through CoreV1Api; every type under ``/apis`` (custom resources, and
        ``apps``/``networking.k8s.io`` kinds read as raw JSON) through CustomObjectsApi."""
        r = self.resource
        group, version = self.served
        kwargs: dict[str, Any] = {"field_selector": r.field_selector} if r.field_selector else {}
        if r.label_selector:
            kwargs["label_selector"] = r.label_selector
        if not group:
            assert self._api_client is not None, "core types need a CustomObjectsApi with its ApiClient"
            core = CoreV1Api(self._api_client)
            if self.namespace is None:
                return core.list_config_map_for_all_namespaces, (), kwargs
            return core.list_namespaced_config_map, (self.namespace,), kwargs
        if self.namespace is None:
            return self.api.list_cluster_custom_object, (group, version, r.plural), kwargs
        return self.api.list_namespaced_custom_object, (group, version, self.namespace, r.plural), kwargs

    async def _resolve(self) -> None:
        """Which of the kind's (group, version) candidates the cluster serves: within the first
        served group, its preferred version if it is a candidate, else the first candidate served.
        None served is a 404, as for a missing CRD (Tekton not installed yet)."""
        if not self.resource.alternatives or self._api_client is None:
            return
        typed = await ApisApi(self._api_client).get_api_versions(
            _request_timeout=self.settings.kube_request_timeout_s
        )
        body = self._api_client.sanitize_for_serialization(typed)
        groups = {g.get("name"): g for g in body.get("groups") or [] if isinstance(g, dict)}
        chosen = choose_version(self.resource.candidates, groups)
        if chosen is None:
            raise ApiException(status=404, reason=f"no version of {self.resource.name} is served")
        if chosen != self.served:
            log.info("%s served as %s/%s", self.resource.name, *chosen, extra={"resource": self.name})
        self.served = chosen

    async def relist(self, reason: str) -> None:
        """LIST, replace the cache's view, remember the collection RV."""
        await self._resolve()
        fn, args, kwargs = self._list_fn()
        started = time.monotonic()
        body = await fn(*args, **kwargs, _request_timeout=self.settings.kube_request_timeout_s)
        if not isinstance(body, dict) and self._api_client is not None:
            body = self._api_client.sanitize_for_serialization(body)  # a typed core list: to JSON
        items = body.get("items") or []
        touched = self.cache.replace(self.resource, self.namespace, items)
        self.cache.served[self.resource.name] = "/".join(p for p in self.served if p)
        self.rv = body.get("metadata", {}).get("resourceVersion")
        self.lists += 1
        self.last_error = None
        self._present = True
        self.absence_suspected = False
        self._count("relists", self.resource.name, reason)
        self._alive()
        log.info(
            "listed %s",
            self.name,
            extra={
                "items": len(items),
                "rv": self.rv,
                "reason": reason,
                "ms": int((time.monotonic() - started) * 1000),
            },
        )
        first = not self.synced.is_set()
        self.synced.set()
        self._on_change(touched)
        if not first:
            self._on_relist()

    async def _stream(self) -> int:
        """One watch connection from ``self.rv``; returns the number of events received."""
        fn, args, kwargs = self._list_fn()
        received = 0
        inactivity = self.settings.inactivity_timeout_s
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(inactivity) as deadline:
            async with Watch(self._api_client).stream(
                fn,
                *args,
                **kwargs,
                resource_version=self.rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.settings.watch_timeout_s,
                _request_timeout=aiohttp.ClientTimeout(sock_connect=self.settings.kube_request_timeout_s),
            ) as stream:
                async for event in stream:
                    deadline.reschedule(loop.time() + inactivity)
                    received += 1
                    self._handle(event)
        return received

    def _handle(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type"))
        obj = event.get("raw_object")
        self._alive()
        self._count("events", self.resource.name, kind)
        if not isinstance(obj, dict):
            log.warning("watch event without an object", extra={"resource": self.name, "type": kind})
            return
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if kind == "BOOKMARK":
            if isinstance(rv, str):
                self.rv = rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("unknown watch event type", extra={"resource": self.name, "type": kind})
            return
        touched = self.cache.apply(self.resource, kind, obj)
        if isinstance(rv, str):
            self.rv = rv
        if touched:
            self._on_change(touched)

    async def run(self) -> None:
        """List, then watch from the last resourceVersion, forever: each kind of failure has its
        handler below, and none ends the loop."""
        self._backoff.reset()
        self._reason = "initial"
        while True:
            try:
                await self._list_and_watch()
            except ApiException as exc:
                await self._on_api_error(exc)
            except TimeoutError:
                log.warning(
                    "no event or bookmark for %.1fs; reconnecting",
                    self.settings.inactivity_timeout_s,
                    extra={"resource": self.name, "rv": self.rv},
                )
                self._count("reconnects", self.resource.name, "inactivity")
            except Exception as exc:  # nothing a connection raises may end the loop
                await self._on_connection_error(exc)

    async def _list_and_watch(self) -> None:
        if self.rv is None or self._reason != "resume":
            await self.relist(self._reason)
        self._reason = "resume"
        received = await self._stream()
        self._alive()
        self._count("reconnects", self.resource.name, "stream-end")
        if received:
            self._backoff.reset()
        else:
            # A stream that ends without any event (dropped, or a server closing early): do not spin.
            await self._backoff.sleep(at_most=0.2)

    async def _on_api_error(self, exc: ApiException) -> None:
        self.last_error = f"{exc.status} {exc.reason}"
        if exc.status == 410:
            log.warning("history expired (410); re-listing", extra={"resource": self.name, "rv": self.rv})
            self._reason = "410"
        elif exc.status == 404 and self.resource.optional:
            await self._on_not_found()
        elif exc.status == 403 and self.resource.optional:
            # Least privilege: a deployment may grant no access to a kind it does not use. Absent,
            # as a missing CRD is; the log names the rule that would enable it.
            log.warning(
                "forbidden (403): grant get/list/watch on %s to read it; treating it as absent",
                self.resource.name,
                extra={"resource": self.name, "reason": exc.reason},
            )
            await self._on_not_found()
        else:
            log.warning("watch failed: %s", exc.status, extra={"resource": self.name, "reason": exc.reason})
            self._reason = "resume" if self.rv else "error"
            await self._backoff.sleep()

    async def _on_not_found(self) -> None:
        """An optional CRD answered 404: absent, but only once confirmed if it was listed before."""
        self._reason = "reprobe"
        if self._present and not self.absence_suspected:
            # Dropping the objects publishes a delete per trigger: confirm the removal first (a
            # real one still shows after one re-probe interval).
            self.absence_suspected = True
            log.warning(
                "optional CRD answered 404; confirming before treating it as removed",
                extra={"resource": self.name, "retry_in_s": self.settings.optional_reprobe_s},
            )
        else:
            self._present = False
            self.absence_suspected = False
            if self.resource.name not in self.cache.absent:
                log.info("optional CRD absent (404)", extra={"resource": self.name})
            touched = self.cache.set_absent(self.resource, self.namespace)
            self.synced.set()
            self._alive()
            self._on_change(touched)
        await self._sleep_alive(self.settings.optional_reprobe_s)

    async def _on_connection_error(self, exc: Exception) -> None:
        # Transport errors are expected; kubernetes_asyncio also raises a bare Exception for an event
        # line without type/object or a bookmark without a resourceVersion, and KeyError for an
        # ERROR without a reason: those get a traceback.
        transport = isinstance(exc, aiohttp.ClientError | OSError | ValueError)
        log.log(
            logging.WARNING if transport else logging.ERROR,
            "watch %s: %s",
            "transport error" if transport else "failed unexpectedly",
            type(exc).__name__,
            exc_info=None if transport else exc,
            extra={"resource": self.name, "error": str(exc)[:200]},
        )
        self._count("reconnects", self.resource.name, "error")
        self.last_error = type(exc).__name__
        if self.rv is None:
            self._reason = "error"
        await self._backoff.sleep()

    async def _sleep_alive(self, seconds: float) -> None:
        """Wait while staying 'alive' for liveness purposes (an absent CRD is not a stall)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 5.0))
            self._alive()


def choose_version(
    candidates: tuple[tuple[str, str], ...], groups: dict[Any, dict[str, Any]]
) -> tuple[str, str] | None:
    """The served (group, version) among ``candidates`` (see :meth:`ResourceWatcher._resolve`);
    ``groups`` is discovery's ``/apis`` APIGroupList by group name."""
    for group in dict.fromkeys(g for g, _ in candidates):
        info = groups.get(group)
        wanted = [v for g, v in candidates if g == group and v in _served_versions(info)]
        if info is None or not wanted:
            continue
        preferred = (info.get("preferredVersion") or {}).get("version")
        return group, preferred if preferred in wanted else wanted[0]
    return None


def _served_versions(info: dict[str, Any] | None) -> set[str]:
    versions = (info or {}).get("versions") or []
    return {str(v.get("version")) for v in versions if isinstance(v, dict)}

"""Kabanero CRs created by a Kabanero service (``parameters.create: true``): create, update, delete.

The watcher is the only component that talks to its cluster's API, so it executes what broker-api
committed. Its queue ``kabanero-watcher.<cluster>.instances`` (declared by broker-api for every
allowed cluster too, so nothing published before the watcher's first start is lost) receives the
``service.kabanero.*`` events; only the leader consumes it (see ``app._lead``), so one replica at a
time writes, and a message in flight when the lease moves is redelivered to the next leader.

Each event is handled level-triggered, from the event alone:
- ``parameters.create`` and not deleted: the CR ``<name or "kabanero">`` in the namespace must exist
  with exactly ``instance_spec`` as its spec and our mark: label ``kabanero-otc.io/service-instance``
  (the sid, or its hash when the sid is no label value) and annotation of the same name (the sid).
  Absent: created (and the namespace first, if ``CREATE_NAMESPACES``). Ours with another spec:
  replaced (optimistic, on its resourceVersion). Ours and equal: nothing.
- deleted (deprovision): the CR is deleted only if it carries our annotation for this sid, with a
  uid precondition.
- a CR that exists without our mark is never adopted, changed or deleted: the outcome is
  ``refused``, saying so.

Idempotence: every step reads the CR first and writes only the difference, so a redelivery after a
crash (between the write and the ack, or a SIGKILL) or a lease handover repeats nothing. Stale
events (an older revision than the last one handled for the sid) are skipped, so a late
``provisioned`` never re-creates a deleted instance. The outcome of the last event per sid is kept
in ``watch_owned_instances`` (watcher-owned) and served at ``GET /instances`` on the health port.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict
from pymongo.asynchronous.database import AsyncDatabase

from services.kabanero_watcher.kube import (
    ApiClient,
    ApiException,
    CoreV1Api,
    CustomObjectsApi,
    delete_if_uid,
    namespace_named,
)
from shared.amqp import DataModel, Delivery, RetryableError
from shared.events import (
    CloudEvent,
    CommandOutcome,
    CommandOutcomeData,
    RoutingKeys,
    ServiceEventData,
    event_id,
)
from shared.mongo import Document

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kabanero.io", "v1alpha2", "kabaneros"
MARK = "kabanero-otc.io/service-instance"
DEFAULT_NAME = "kabanero"
COLLECTION = "watch_owned_instances"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

Outcome = CommandOutcome
PublishFn = Callable[[CloudEvent], Awaitable[None]]


type Message = Delivery[ServiceEventData]

decode = DataModel(ServiceEventData)
"""The consumer's decoder: the queue binds ``service.kabanero.*`` only; each is validated once."""


def key_of(message: Message) -> str:
    """Per-instance order: the service instance the command is about."""
    return message.event.subject or message.data.instance_id


def label_value(sid: str) -> str:
    """The sid itself when it is a valid label value, else ``sha256-<40 hex>`` of it."""
    return sid if _LABEL_VALUE.match(sid) else f"sha256-{hashlib.sha256(sid.encode()).hexdigest()[:40]}"


class OwnedInstance(BaseModel):
    """What happened to the CR a Kabanero service asked for (one document per sid)."""

    model_config = ConfigDict(extra="ignore")

    instance_id: str
    cluster: str
    namespace: str
    name: str
    revision: int
    outcome: Outcome
    message: str
    at: datetime


class OwnedInstanceStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection = db[COLLECTION]

    async def get(self, sid: str) -> OwnedInstance | None:
        doc = await self.collection.find_one({"_id": sid})
        return OwnedInstance.model_validate(doc) if doc else None

    async def put(self, result: OwnedInstance) -> None:
        await self.collection.replace_one(
            {"_id": result.instance_id}, {"_id": result.instance_id, **result.model_dump()}, upsert=True
        )

    async def all(self) -> list[OwnedInstance]:
        return [OwnedInstance.model_validate(d) async for d in self.collection.find({})]


def _api_message(exc: ApiException) -> str:
    """The API server's own message (Status.message), never the whole body."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or exc.status)[:500]


def _due(data: ServiceEventData, before: OwnedInstance | None) -> bool:
    """A command for a service that asked for an instance, newer than the last one done."""
    if not data.parameters.create and before is None:
        return False  # a service that never asked for an instance
    if before is not None and before.revision >= data.revision:
        log.info("stale instance command skipped", extra={"instance_id": data.instance_id})
        return False
    return True


def _standing(
    done: tuple[Outcome, str], before: OwnedInstance | None, cr: str, sid: str
) -> tuple[Outcome, str]:
    """What to record: an ``unchanged`` CR keeps the effect recorded before (a bind or a repeat)."""
    if done[0] != "unchanged":
        return done
    if before is not None and before.outcome in ("created", "updated"):
        return before.outcome, before.message
    if before is None:
        # Our mark on a CR we have no record of: this command created it and the process died
        # before recording (SIGKILL, lost lease); the redelivery finds it done.
        return "created", f"{cr} created for service {sid}"
    return done


class OwnedInstances:
    """The handler of ``kabanero-watcher.<cluster>.instances``."""

    def __init__(
        self,
        *,
        cluster: str,
        api_client: Callable[[], ApiClient],
        store: OwnedInstanceStore,
        create_namespaces: bool,
        is_leader: Callable[[], bool],
        publish: PublishFn,
        source: str = "/kabanero-watcher",
    ) -> None:
        self._cluster = cluster
        self._api_client = api_client
        self._store = store
        self._create_namespaces = create_namespaces
        self._is_leader = is_leader
        self._publish = publish
        self._source = source

    async def handle(self, delivery: Message) -> None:
        data = delivery.data
        p = data.parameters
        if data.kind != "kabanero" or p.cluster != self._cluster:
            return
        before = await self._store.get(data.instance_id)
        if not _due(data, before):
            if before is not None and before.revision >= data.revision:
                # A redelivery of a command whose outcome was recorded but maybe not published (the
                # process died or RabbitMQ failed in between): publish the recorded outcome again.
                await self._announce(before)
            return
        if not self._is_leader():
            raise RetryableError("not leading: the next leader handles it")
        name = before.name if before is not None else (p.name or DEFAULT_NAME)
        namespace = before.namespace if before is not None else p.namespace
        done = await self._act(data, namespace, name)
        outcome, message = _standing(done, before, f"Kabanero {namespace}/{name}", data.instance_id)
        result = OwnedInstance(
            instance_id=data.instance_id,
            cluster=self._cluster,
            namespace=namespace,
            name=name,
            revision=data.revision,
            outcome=outcome,
            message=message,
            at=datetime.now(UTC),
        )
        await self._store.put(result)
        log.info(
            "instance command done",
            extra={
                "instance_id": data.instance_id,
                "outcome": outcome,
                "namespace": namespace,
                "cr_name": name,
            },
        )
        await self._announce(result)

    async def _announce(self, result: OwnedInstance) -> None:
        """``kabanero.command.outcome`` for broker-api (the service's dashboard), after the record:
        a failed publish fails the command, whose redelivery publishes the recorded outcome."""
        data = CommandOutcomeData(**result.model_dump())
        event = CloudEvent.for_data(
            RoutingKeys.COMMAND_OUTCOME,
            data,
            source=self._source,
            subject=result.instance_id,
            id=event_id("outcome", result.instance_id, result.revision),
        )
        await self._publish(event)

    async def _act(self, data: ServiceEventData, namespace: str, name: str) -> tuple[Outcome, str]:
        """Delete, create or update the CR; a refusal by the API server is an outcome, any other
        API error is retried."""
        try:
            if data.deleted:
                return await self._delete(data.instance_id, namespace, name)
            if data.parameters.create:
                return await self._ensure(data, namespace, name)
            return "unchanged", "parameters.create is false: the CR is left as it is"
        except ApiException as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 409, 429):
                return "failed", f"the API server refused it ({exc.status}): {_api_message(exc)}"
            raise RetryableError(f"Kubernetes API {exc.status}: {_api_message(exc)}") from None

    def _custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self._api_client())

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self._custom().get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    @staticmethod
    def _ours(obj: dict[str, Any], sid: str) -> bool:
        return (obj.get("metadata", {}).get("annotations") or {}).get(MARK) == sid

    async def _ensure(self, data: ServiceEventData, namespace: str, name: str) -> tuple[Outcome, str]:
        sid, spec = data.instance_id, data.instance_spec or {}
        current = await self._read(namespace, name)
        if current is None:
            if self._create_namespaces:
                await self._ensure_namespace(namespace)
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Kabanero",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {MARK: label_value(sid)},
                    "annotations": {MARK: sid},
                },
                "spec": spec,
            }
            try:
                await self._custom().create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            except ApiException as exc:
                if exc.status == 409:  # made meanwhile (by us in a previous attempt, or someone else)
                    raise RetryableError("created meanwhile: look again") from None
                raise
            return "created", f"Kabanero {namespace}/{name} created for service {sid}"
        if not self._ours(current, sid):
            return "refused", (
                f"Kabanero {namespace}/{name} exists and was not created by this service: left unchanged "
                "(kabanero-otc never adopts, changes or deletes an instance it did not create; one that "
                "GitOps manages should not be created from OTC)"
            )
        if current.get("spec") == spec:
            return "unchanged", f"Kabanero {namespace}/{name} has the requested spec"
        updated = {**current, "spec": spec}
        await self._custom().replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, updated
        )
        return "updated", f"Kabanero {namespace}/{name} spec replaced"

    async def _ensure_namespace(self, namespace: str) -> None:
        core = CoreV1Api(self._api_client())
        try:
            await core.create_namespace(namespace_named(namespace))
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def _delete(self, sid: str, namespace: str, name: str) -> tuple[Outcome, str]:
        current = await self._read(namespace, name)
        if current is None:
            return "absent", f"Kabanero {namespace}/{name} does not exist: nothing to delete"
        if not self._ours(current, sid):
            return "refused", f"Kabanero {namespace}/{name} was not created by this service: not deleted"
        uid = current.get("metadata", {}).get("uid")
        try:
            await self._custom().delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body=delete_if_uid(uid),
            )
        except ApiException as exc:
            if exc.status == 404:
                return "absent", f"Kabanero {namespace}/{name} was already gone"
            raise
        return "deleted", f"Kabanero {namespace}/{name} deleted with its service"


def owned_instances_route(store: OwnedInstanceStore) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /instances``: the outcome of the last command per Kabanero service that creates its CR."""

    async def handler(_: web.Request) -> web.Response:
        items = sorted(await store.all(), key=lambda i: i.instance_id)
        return web.json_response({"instances": [i.model_dump(mode="json") for i in items]})

    return handler

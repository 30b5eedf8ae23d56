"""The broker routes, declared once: what each does (read by :mod:`.http`) and how it is documented
(read by :mod:`.openapi`), so the served table and the OpenAPI document cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from services.broker_api import instances
from services.broker_api.crypto import CredentialsCipher
from services.broker_api.instances import Change, Policy
from services.broker_api.models import (
    BindRequest,
    InstanceRecord,
    InstanceResponse,
    MessageRequest,
    ProvisionRequest,
    UpdateRequest,
)
from shared.events import ServiceKind

# Request bodies whose ``service_id`` must be the broker's own id (a 400 otherwise; one schema per
# broker in the document).
PER_BROKER: tuple[type[BaseModel], ...] = (ProvisionRequest, UpdateRequest)


@dataclass(frozen=True)
class Op:
    """One operation as the OpenAPI document shows it."""

    method: Literal["get", "put", "patch", "delete", "post"]
    path: str
    summary: str
    success: int
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    auth: bool = True
    errors: tuple[int, ...] = (400, 401, 405, 413, 503)
    request_optional: bool = False
    notes: Mapping[int, str] = field(default_factory=dict)  # per-operation error descriptions


@dataclass(frozen=True)
class Call:
    """What a mutation's change function may use: the path ids, the parsed body, policy, cipher, time."""

    kind: ServiceKind
    sid: str
    tid: str | None
    req: Any
    policy: Policy
    cipher: CredentialsCipher
    now: datetime


@dataclass(frozen=True)
class Mutation:
    """One ``service_instances`` route (below ``/<broker>/api/v1``) of the broker contract (§3)."""

    op: Op
    message: str
    change: Callable[[Call, InstanceRecord | None], Change | None]
    likely_new: bool = False
    """Try the insert of a new record first, unread (PUT of an instance: usually a new sid)."""

    @property
    def method(self) -> str:
        return self.op.method.upper()

    @property
    def path(self) -> str:
        return self.op.path

    @property
    def body(self) -> type[BaseModel] | None:
        return self.op.request

    @property
    def checks_service_id(self) -> bool:
        return self.op.request in PER_BROKER

    @property
    def answers_instance(self) -> bool:
        """200 with the instance (PUT and PATCH answer §3's shape); otherwise 204."""
        return self.op.response is InstanceResponse


INSTANCE = "/service_instances/{sid}"
TOOLCHAIN = "/service_instances/{sid}/toolchains/{tid}"
_NOT_FOUND = (400, 401, 404, 405, 413, 503)
MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        Op(
            "put",
            INSTANCE,
            "Provision or update (upsert) a service instance",
            200,
            ProvisionRequest,
            InstanceResponse,
        ),
        "service instance provisioned or updated",
        lambda c, rec: instances.provision(
            rec, kind=c.kind, sid=c.sid, req=c.req, policy=c.policy, cipher=c.cipher, now=c.now
        ),
        likely_new=True,
    ),
    Mutation(
        Op(
            "patch",
            INSTANCE,
            "Update parameters of a service instance",
            200,
            UpdateRequest,
            InstanceResponse,
            errors=_NOT_FOUND,
        ),
        "service instance updated",
        lambda c, rec: instances.update(
            rec, kind=c.kind, sid=c.sid, req=c.req, policy=c.policy, cipher=c.cipher, now=c.now
        ),
    ),
    Mutation(
        Op("delete", INSTANCE, "Delete a service instance (204 also when unknown)", 204),
        "service instance deleted",
        lambda c, rec: instances.deprovision(rec, now=c.now),
    ),
    Mutation(
        Op("put", TOOLCHAIN, "Bind to a toolchain (repeat: 204)", 204, BindRequest, errors=_NOT_FOUND),
        "toolchain bound",
        lambda c, rec: instances.bind(rec, tid=c.tid or "", req=c.req, cipher=c.cipher, now=c.now),
    ),
    Mutation(
        Op("delete", TOOLCHAIN, "Unbind from a toolchain (204 also when not bound)", 204),
        "toolchain unbound",
        lambda c, rec: instances.unbind(rec, tid=c.tid or "", now=c.now),
    ),
    Mutation(
        Op("delete", "/service_instances/{sid}/toolchains", "Unbind from every toolchain", 204),
        "all toolchains unbound",
        lambda c, rec: instances.unbind_all(rec, now=c.now),
    ),
)
MESSAGING = Op(
    "post",
    "/messaging/accept",
    "Accept an OTC lifecycle message (Basic: broker or toolchain credentials)",
    204,
    MessageRequest,
    auth=True,
    notes={
        400: "missing or malformed field, or an 'instance_id' this broker does not know "
        "(OTC contract, otc-api §2.7: 400 also for valid data naming an unknown instance)",
        401: "neither the broker credentials nor the toolchain credentials stored for "
        "'instance_id' and 'toolchain_id'",
    },
)
"""The one broker route whose handler also accepts toolchain credentials."""
BROKER_OPS: tuple[Op, ...] = (*(m.op for m in MUTATIONS), MESSAGING)
"""Every route of one broker (below ``/<broker>/api/v1``), as the document lists them."""

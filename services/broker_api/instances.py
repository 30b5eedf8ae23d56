"""What each broker call does to an instance record: pure functions, no I/O.

Each function takes the current record (``None`` when the sid was never seen) and returns a
:class:`Change` (the new record and the events it implies) or ``None`` when nothing changes (an
idempotent repeat: no write, no event). The store commits a change atomically together with its
events (outbox), so they can be unit-tested without MongoDB or RabbitMQ.

Event choices (documented in the README):
- unbind-all publishes one ``unbound`` per previously bound toolchain (bind order), each with its
  own revision and the toolchains remaining after that step, so consumers handle one shape only;
- delete of a bound instance publishes those ``unbound`` events first, then ``deprovisioned``
  (``deleted: true``, ``toolchains: []``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr

from services.broker_api.crypto import CredentialsCipher
from services.broker_api.errors import BadRequest, NotFound
from services.broker_api.models import (
    Binding,
    BindRequest,
    InstanceRecord,
    Parameters,
    ParametersIn,
    ProvisionRequest,
    UpdateRequest,
)
from services.broker_api.settings import Settings
from shared.events import ServiceEvent, ServiceKind


@dataclass(frozen=True)
class Pending:
    """One event implied by a change; ``toolchains`` = bound ids right after this step."""

    event: ServiceEvent
    toolchains: tuple[str, ...]
    toolchain_id: str | None = None


@dataclass(frozen=True)
class Change:
    record: InstanceRecord
    events: tuple[Pending, ...]


class Policy:
    """Defaults, allowed clusters and the dashboard URL, from settings."""

    def __init__(self, settings: Settings) -> None:
        self._clusters = settings.clusters
        self._default_cluster = settings.default_cluster
        self._default_namespace = settings.default_namespace
        self._pattern = settings.kabanero_dashboard_url_pattern

    def resolve(self, given: ParametersIn, base: Parameters | None = None) -> Parameters:
        """PUT: ``base`` None, missing keys take defaults. PATCH: keys present override ``base``."""
        present = given.model_fields_set
        if base is None:
            cluster, namespace, name = given.cluster, given.namespace, given.name
        else:
            cluster = given.cluster if "cluster" in present else base.cluster
            namespace = given.namespace if "namespace" in present else base.namespace
            name = given.name if "name" in present else base.name
        cluster = cluster or self._default_cluster
        if cluster not in self._clusters:
            raise BadRequest(
                "invalid request: 'parameters.cluster' is not a configured cluster (allowed: "
                + ", ".join(self._clusters)
                + ")"
            )
        return Parameters(cluster=cluster, namespace=namespace or self._default_namespace, name=name)

    def dashboard_url(self, kind: ServiceKind, sid: str, params: Parameters) -> str:
        return self._pattern.format(
            cluster=params.cluster,
            namespace=params.namespace,
            name=params.name or "kabanero",
            instance_id=sid,
            service_id=kind,
        )


def record_key(kind: ServiceKind, sid: str) -> str:
    return f"{kind}:{sid}"


def _alive(rec: InstanceRecord | None) -> InstanceRecord | None:
    return rec if rec is not None and rec.state == "active" else None


def _new_credentials(
    cipher: CredentialsCipher, stored: str | None, given: SecretStr | None
) -> tuple[str | None, bool]:
    """Stored token to keep (omitted, empty or equal) or a new one; and whether it changed."""
    if given is None or not given.get_secret_value() or cipher.matches(stored, given):
        return stored, False
    return cipher.encrypt(given), True


def provision(
    rec: InstanceRecord | None,
    *,
    kind: ServiceKind,
    sid: str,
    req: ProvisionRequest,
    policy: Policy,
    cipher: CredentialsCipher,
    now: datetime,
) -> Change | None:
    params = policy.resolve(req.parameters)
    dashboard = policy.dashboard_url(kind, sid, params)
    current = _alive(rec)
    if current is None:
        new = InstanceRecord(
            key=record_key(kind, sid),
            kind=kind,
            instance_id=sid,
            service_id=req.service_id,
            organization_guid=req.organization_guid,
            parameters=params,
            dashboard_url=dashboard,
            service_credentials=cipher.encrypt(req.service_credentials) if req.service_credentials else None,
            created_at=now,
            updated_at=now,
            revision=rec.revision if rec else 0,
        )
        return Change(new, (Pending("provisioned", ()),))
    return _updated(current, req, params=params, dashboard=dashboard, cipher=cipher, now=now)


def update(
    rec: InstanceRecord | None,
    *,
    kind: ServiceKind,
    sid: str,
    req: UpdateRequest,
    policy: Policy,
    cipher: CredentialsCipher,
    now: datetime,
) -> Change | None:
    current = _alive(rec)
    if current is None:
        raise NotFound("service instance not found")
    params = policy.resolve(req.parameters, current.parameters) if req.parameters else current.parameters
    dashboard = policy.dashboard_url(kind, sid, params)
    return _updated(current, req, params=params, dashboard=dashboard, cipher=cipher, now=now)


def _updated(
    current: InstanceRecord,
    req: ProvisionRequest | UpdateRequest,
    *,
    params: Parameters,
    dashboard: str,
    cipher: CredentialsCipher,
    now: datetime,
) -> Change | None:
    """PUT on a live instance and PATCH: new parameters, organization or credentials, or nothing."""
    creds, creds_changed = _new_credentials(cipher, current.service_credentials, req.service_credentials)
    org = req.organization_guid if req.organization_guid is not None else current.organization_guid
    if not creds_changed and params == current.parameters and org == current.organization_guid:
        return None
    new = current.model_copy(
        update={
            "parameters": params,
            "dashboard_url": dashboard,
            "organization_guid": org,
            "service_credentials": creds,
            "updated_at": now,
        }
    )
    return Change(new, (Pending("updated", tuple(current.toolchain_ids)),))


def bind(
    rec: InstanceRecord | None, *, tid: str, req: BindRequest, cipher: CredentialsCipher, now: datetime
) -> Change | None:
    current = _alive(rec)
    if current is None:
        raise NotFound("service instance not found")
    for i, binding in enumerate(current.toolchains):
        if binding.id == tid:
            if cipher.matches(binding.credentials, req.toolchain_credentials):
                return None
            # Repeat bind with rotated credentials: store them, but the binding itself is unchanged.
            bindings = list(current.toolchains)
            bindings[i] = binding.model_copy(
                update={"credentials": cipher.encrypt(req.toolchain_credentials)}
            )
            return Change(current.model_copy(update={"toolchains": bindings, "updated_at": now}), ())
    bindings = [
        *current.toolchains,
        Binding(id=tid, credentials=cipher.encrypt(req.toolchain_credentials), bound_at=now),
    ]
    new = current.model_copy(update={"toolchains": bindings, "updated_at": now})
    return Change(new, (Pending("bound", tuple(new.toolchain_ids), tid),))


def unbind(rec: InstanceRecord | None, *, tid: str, now: datetime) -> Change | None:
    current = _alive(rec)
    if current is None or tid not in current.toolchain_ids:
        return None
    bindings = [b for b in current.toolchains if b.id != tid]
    new = current.model_copy(update={"toolchains": bindings, "updated_at": now})
    return Change(new, (Pending("unbound", tuple(new.toolchain_ids), tid),))


def _unbind_each(current: InstanceRecord) -> list[Pending]:
    ids = current.toolchain_ids
    return [Pending("unbound", tuple(ids[i + 1 :]), tid) for i, tid in enumerate(ids)]


def unbind_all(rec: InstanceRecord | None, *, now: datetime) -> Change | None:
    current = _alive(rec)
    if current is None or not current.toolchains:
        return None
    new = current.model_copy(update={"toolchains": [], "updated_at": now})
    return Change(new, tuple(_unbind_each(current)))


def deprovision(rec: InstanceRecord | None, *, now: datetime) -> Change | None:
    """Mark deleted and strip every secret; a later PUT of the same sid provisions it again."""
    current = _alive(rec)
    if current is None:
        return None
    new = current.model_copy(
        update={
            "state": "deleted",
            "service_credentials": None,
            "toolchains": [],
            "updated_at": now,
            "deleted_at": now,
        }
    )
    return Change(new, (*_unbind_each(current), Pending("deprovisioned", ())))

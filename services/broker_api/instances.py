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
from typing import Any, Literal

from pydantic import SecretStr

from services.broker_api.crypto import CredentialsCipher
from services.broker_api.dashboard import DashboardLinks
from services.broker_api.errors import BadRequest, NotFound
from services.broker_api.instance_spec import spec_errors
from services.broker_api.kinds import RULES, KindRules
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
class EventsToolOp:
    """An ``otc.tool.apply|remove`` command for the Kabanero Events tool this service added (or
    adds) to ``toolchain_id`` (``parameters.events`` = auto). Committed with the change, published
    after its service events, each with its own revision."""

    op: Literal["apply", "remove"]
    toolchain_id: str


@dataclass(frozen=True)
class Change:
    record: InstanceRecord
    events: tuple[Pending, ...]
    tools: tuple[EventsToolOp, ...] = ()


class Policy:
    """Defaults, allowed clusters and the dashboard URL, from settings; per kind, its rules
    (:data:`services.broker_api.kinds.RULES`)."""

    def __init__(self, settings: Settings) -> None:
        self._clusters = settings.clusters
        self._default_cluster = settings.default_cluster
        self._default_namespace = settings.default_namespace
        self._landing = {kind: getattr(settings, r.landing_setting) for kind, r in RULES.items()}
        self._events = settings.auto_events_service
        self.links = DashboardLinks(settings.credentials_key, settings.broker_public_url)

    def resolve(
        self, given: ParametersIn, base: Parameters | None = None, *, kind: ServiceKind = "kabanero"
    ) -> Parameters:
        """PUT: ``base`` None, missing keys take defaults. PATCH: keys present override ``base``.
        A key the kind's rules refuse is a 400 naming it; one that does not apply is ignored."""
        rules = RULES[kind]
        rules.refuse(given)
        merged = _merged(given, base)
        create, instance = self._creation(given, base, rules)
        namespaces = merged["namespaces"]
        resolved = Parameters(
            cluster=self._allowed(merged["cluster"] or self._default_cluster),
            namespace=(merged["namespace"] or self._default_namespace) if rules.one_instance else "",
            name=merged["name"] if rules.one_instance else None,
            events=(merged["events"] or self._events) if rules.events else None,
            create=create,
            instance=instance,
            namespaces=sorted(set(namespaces)) if namespaces and not rules.one_instance else None,
        )
        if base is not None and base.create and _place(resolved) != _place(base):
            raise BadRequest(
                "invalid request: 'parameters.cluster', 'parameters.namespace' and 'parameters.name' "
                "cannot change while the service creates its instance (parameters.create)"
            )
        return resolved

    def _allowed(self, cluster: str) -> str:
        if cluster not in self._clusters:
            raise BadRequest(
                "invalid request: 'parameters.cluster' is not a configured cluster (allowed: "
                + ", ".join(self._clusters)
                + ")"
            )
        return cluster

    @staticmethod
    def _creation(
        given: ParametersIn, base: Parameters | None, rules: KindRules
    ) -> tuple[bool, dict[str, Any] | None]:
        """``create`` and ``instance``: PATCH keeps what is not given. A spec the CRD schema refuses
        is a 400 naming the first bad field (on either Kabanero broker: the published schema is the
        same); the Events broker then ignores both. ``instance`` without ``create`` is kept, inert."""
        present = given.model_fields_set
        if given.instance is not None:
            errors = spec_errors(given.instance)
            if errors:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise BadRequest(f"invalid request: {errors[0]}{more}")
        if not rules.creates:
            return False, None
        create = bool(given.create) if "create" in present or base is None else base.create
        instance = given.instance if "instance" in present or base is None else base.instance
        if create and instance is None:
            instance = {}  # an empty spec: the Kabanero operator's defaults
        return create, instance

    def dashboard_url(self, kind: ServiceKind, sid: str, params: Parameters) -> str:
        """broker-api's own page for the service (a Kabanero service that creates its instance: the
        cluster side's outcome; a Tekton service: the installation, services.broker_api.dashboard
        and tekton_page) when the kind's rules say so and ``BROKER_PUBLIC_URL`` is set; else the
        kind's landing pattern."""
        if RULES[kind].has_page(params):
            own = self.links.url(sid, kind)
            if own is not None:
                return own
        return self.landing_url(kind, sid, params)

    def landing_url(self, kind: ServiceKind, sid: str, params: Parameters) -> str:
        """The kind's pattern (``KABANERO_DASHBOARD_URL_PATTERN``, ``TEKTON_DASHBOARD_URL_PATTERN``)
        filled in for this instance."""
        return str(
            self._landing[kind].format(
                cluster=params.cluster,
                namespace=params.namespace,
                name=params.name or "kabanero",
                instance_id=sid,
                service_id=kind,
            )
        )


MERGED = ("cluster", "namespace", "name", "events", "namespaces")


def _merged(given: ParametersIn, base: Parameters | None) -> dict[str, Any]:
    """The :data:`MERGED` keys: PUT (no ``base``) as given, PATCH each given key over ``base``."""
    present = given.model_fields_set
    return {k: getattr(given, k) if base is None or k in present else getattr(base, k) for k in MERGED}


def _place(params: Parameters) -> tuple[str, str, str | None]:
    """Where the instance a service stands for lives (fixed while the service creates it)."""
    return params.cluster, params.namespace, params.name


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
    params = policy.resolve(req.parameters, kind=kind)
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
    params = (
        policy.resolve(req.parameters, current.parameters, kind=kind)
        if req.parameters
        else current.parameters
    )
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
    # manual -> auto: the toolchains bound already get their Events tool now. auto -> manual leaves
    # the ones added in place (still removed on unbind/delete): no op, only no new ones.
    adds = (
        [t for t in current.toolchain_ids if t not in current.events_tools] if params.events == "auto" else []
    )
    new = current.model_copy(
        update={
            "parameters": params,
            "dashboard_url": dashboard,
            "organization_guid": org,
            "service_credentials": creds,
            "updated_at": now,
            "events_tools": [*current.events_tools, *adds],
        }
    )
    return Change(
        new,
        (Pending("updated", tuple(current.toolchain_ids)),),
        tuple(EventsToolOp("apply", t) for t in adds),
    )


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
    auto = current.parameters.events == "auto" and tid not in current.events_tools
    new = current.model_copy(
        update={
            "toolchains": bindings,
            "updated_at": now,
            "events_tools": [*current.events_tools, tid] if auto else current.events_tools,
        }
    )
    ops = (EventsToolOp("apply", tid),) if auto else ()
    return Change(new, (Pending("bound", tuple(new.toolchain_ids), tid),), ops)


def _removing(current: InstanceRecord, tids: list[str]) -> tuple[list[str], tuple[EventsToolOp, ...]]:
    """The Events tools this service added to ``tids``: what remains recorded, and their removes."""
    gone = [t for t in current.events_tools if t in tids]
    return [t for t in current.events_tools if t not in gone], tuple(EventsToolOp("remove", t) for t in gone)


def unbind(rec: InstanceRecord | None, *, tid: str, now: datetime) -> Change | None:
    current = _alive(rec)
    if current is None or tid not in current.toolchain_ids:
        return None
    bindings = [b for b in current.toolchains if b.id != tid]
    kept, ops = _removing(current, [tid])
    new = current.model_copy(update={"toolchains": bindings, "updated_at": now, "events_tools": kept})
    return Change(new, (Pending("unbound", tuple(new.toolchain_ids), tid),), ops)


def _unbind_each(current: InstanceRecord) -> list[Pending]:
    ids = current.toolchain_ids
    return [Pending("unbound", tuple(ids[i + 1 :]), tid) for i, tid in enumerate(ids)]


def unbind_all(rec: InstanceRecord | None, *, now: datetime) -> Change | None:
    current = _alive(rec)
    if current is None or not current.toolchains:
        return None
    kept, ops = _removing(current, current.toolchain_ids)
    new = current.model_copy(update={"toolchains": [], "updated_at": now, "events_tools": kept})
    return Change(new, tuple(_unbind_each(current)), ops)


def deprovision(rec: InstanceRecord | None, *, now: datetime) -> Change | None:
    """Mark deleted and strip every secret; a later PUT of the same sid provisions it again."""
    current = _alive(rec)
    if current is None:
        return None
    _, ops = _removing(current, current.events_tools)
    new = current.model_copy(
        update={
            "state": "deleted",
            "service_credentials": None,
            "toolchains": [],
            "updated_at": now,
            "deleted_at": now,
            "events_tools": [],
        }
    )
    return Change(new, (*_unbind_each(current), Pending("deprovisioned", ())), ops)

"""Wire models of the broker contract (docs/architecture.md §3) and the stored record (``service_instances``).

Request models ignore unknown fields (OTC sends more than we read). Secrets are typed ``SecretStr``
so an accidental ``repr`` or log shows ``**********``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    WithJsonSchema,
    field_serializer,
    field_validator,
)

from services.broker_api.instance_spec import spec_schema
from shared.events import CloudEvent, ServiceKind

ID_PATTERN = r"^[A-Za-z0-9._~-]{1,255}$"
ID_RE = re.compile(ID_PATTERN)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SCHEMA_VERSION = 1
EventsMode = Literal["auto", "manual"]
# The published schema of parameters.instance is the CRD's own (so fuzzers and clients see the rules
# broker-api applies); the check itself is instance_spec.spec_errors (a 400 naming the field).
InstanceSpec = Annotated[
    dict[str, Any] | None,
    WithJsonSchema({"anyOf": [spec_schema(), {"type": "null"}], "default": None}),
]
# context root of each broker -> its OTC service_id (= the event kind), docs/architecture.md §1/§3;
# each kind's parameter rules are services.broker_api.kinds.RULES
BROKERS: dict[str, ServiceKind] = {
    "kabanero-broker": "kabanero",
    "kabanero-events-broker": "kabanero-events",
    "tekton-broker": "tekton",
}
MAX_NAMESPACES = 100
"""Bound of a Tekton service's ``parameters.namespaces`` (before deduplication)."""
Namespace = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
_SECRET = {"type": "string", "format": "password", "writeOnly": True}
# What ``_credential`` accepts, so the published schema is exact (an empty string is refused).
Credential = Annotated[
    SecretStr, WithJsonSchema({"anyOf": [{**_SECRET, "minLength": 1}, {"type": "object"}], "writeOnly": True})
]
OptionalCredential = Annotated[
    SecretStr | None,
    WithJsonSchema({"anyOf": [_SECRET, {"type": "object"}, {"type": "null"}], "default": None}),
]


def _credential(v: object) -> object:
    """Credentials are opaque to us: a non-empty string, or an object we store as JSON."""
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, str):
        try:
            v.encode()
        except UnicodeEncodeError:
            # JSON can carry a lone surrogate ("\ud800"); it cannot be encrypted or stored as text.
            raise ValueError("must be valid Unicode text (a lone surrogate is not)") from None
    return v


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ParametersIn(_Request):
    """Service parameters as OTC sends them; every key optional (defaults come from settings)."""

    cluster: str | None = Field(default=None, min_length=1, max_length=253)
    namespace: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)
    name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    events: EventsMode | None = Field(
        default=None,
        description="Kabanero broker only: 'auto' adds a Kabanero Events tool to each toolchain the "
        "service is bound to; 'manual' (default: setting AUTO_EVENTS_SERVICE) adds none",
    )
    create: StrictBool | None = Field(
        default=None,
        description="Kabanero broker only: true makes the watcher of the cluster create the Kabanero "
        "CR (spec: parameters.instance), apply later PATCHes of it and delete it on deprovision",
    )
    instance: InstanceSpec = Field(
        default=None,
        description="the Kabanero spec (kabaneros.kabanero.io v1alpha2, checked against the CRD's "
        "schema); the watcher creates it when create is true ({} when absent: Kabanero's defaults)",
    )
    namespaces: list[Namespace] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAMESPACES,
        description="Tekton broker only: the namespaces whose Pipelines and EventListeners are "
        "mirrored (DNS labels, deduplicated and sorted); absent or null: every namespace. An empty "
        "list is refused (it would mirror nothing)",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _some_namespaces(cls, v: object) -> object:
        if v == []:  # before pydantic's own "at least 1 item": say what to send instead
            raise ValueError("must name at least one namespace (omit it, or null, for every namespace)")
        return v


class ProvisionRequest(_Request):
    """Body of ``PUT /service_instances/{sid}`` (create or update)."""

    service_id: str = Field(min_length=1, max_length=255)
    organization_guid: str | None = Field(default=None, max_length=255)
    parameters: ParametersIn = Field(default_factory=ParametersIn)
    service_credentials: OptionalCredential = None
    dashboard_url: str | None = Field(default=None, max_length=2048, description="accepted, not used")

    _cred = field_validator("service_credentials", mode="before")(_credential)


class UpdateRequest(_Request):
    """Body of ``PATCH /service_instances/{sid}``: only the keys present change."""

    service_id: str | None = Field(default=None, min_length=1, max_length=255)
    organization_guid: str | None = Field(default=None, max_length=255)
    parameters: ParametersIn | None = None
    service_credentials: OptionalCredential = None

    _cred = field_validator("service_credentials", mode="before")(_credential)


class BindRequest(_Request):
    """Body of ``PUT /service_instances/{sid}/toolchains/{tid}``."""

    toolchain_credentials: Credential

    _cred = field_validator("toolchain_credentials", mode="before")(_credential)

    @field_validator("toolchain_credentials")
    @classmethod
    def _not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value():
            raise ValueError("must not be empty")
        return v


class MessageRequest(_Request):
    """Body of ``POST /messaging/accept`` (an OTC lifecycle message, docs/reference/otc-api.md §2)."""

    service_id: str = Field(min_length=1, max_length=255)
    instance_id: str = Field(pattern=ID_PATTERN)
    toolchain_id: str = Field(pattern=ID_PATTERN)
    payload: dict[str, Any]


class Parameters(BaseModel):
    """Resolved parameters of an instance (stored and returned)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cluster: str
    namespace: str
    """Kabanero services: the instance's namespace; "" for a Tekton service (see ``namespaces``)."""
    name: str | None = None
    events: EventsMode | None = None
    """Kabanero services: whether binding adds a Kabanero Events tool; None for Events services."""
    namespaces: list[str] | None = None
    """Tekton services: the namespaces mirrored, deduplicated and sorted; None: every namespace."""
    create: bool = False
    """Kabanero services: the watcher creates (and owns) the Kabanero CR with spec ``instance``."""
    instance: dict[str, Any] | None = None
    """Stored as canonical JSON text: a spec's keys may be anything JSON allows (``$x``, ``a.b``,
    NUL), which MongoDB refuses as field names."""

    @field_validator("instance", mode="before")
    @classmethod
    def _instance_from_text(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

    @field_serializer("instance")
    def _instance_as_text(self, v: dict[str, Any] | None) -> str | None:
        return None if v is None else json.dumps(v, sort_keys=True, separators=(",", ":"))

    @property
    def label(self) -> str:
        """Short text for the OTC tool card of a Kabanero service: ``<cluster>/<namespace>[/<name>]``
        (a Tekton service's is ``kinds.tekton_label``)."""
        return "/".join(p for p in (self.cluster, self.namespace, self.name) if p)


class ParametersOut(BaseModel):
    """Parameters as returned to OTC, with the tool card label."""

    cluster: str
    namespace: str | None = Field(default=None, description="Kabanero services: the instance's namespace")
    name: str | None = None
    namespaces: list[str] | None = Field(
        default=None, description="Tekton services: the namespaces mirrored (absent: every namespace)"
    )
    label: str = Field(
        description="human text for the OTC tool card: '<cluster>/<namespace>[/<name>]', or for a "
        "Tekton service 'Tekton on <cluster>[ (<namespaces>)]'"
    )
    events: EventsMode | None = Field(default=None, description="Kabanero services: auto or manual")
    create: bool | None = Field(default=None, description="Kabanero services: true when it creates its CR")
    instance: dict[str, Any] | None = Field(default=None, description="with create: the Kabanero spec")
    instance_status: str | None = Field(
        default=None,
        description="with create: where the cluster side's outcome is shown (created, updated, "
        "refused with the API server's message)",
    )
    events_note: str | None = Field(
        default=None,
        description="set when events is 'manual' but Events tools added automatically remain: they "
        "are left in place (removed on unbind/delete); no new ones are added",
    )


class InstanceResponse(BaseModel):
    """200 body of PUT/PATCH."""

    instance_id: str
    dashboard_url: str
    parameters: ParametersOut
    organization_guid: str | None = None


class ErrorBody(BaseModel):
    """Every error: ``{"description": ...}`` naming the problem."""

    description: str


class StatusResponse(BaseModel):
    status: Literal["ok", "warn"]
    checks: dict[str, str] = Field(default_factory=dict)
    brokers: list[str] = Field(default_factory=list, description="the brokers this deployment serves")


class VersionResponse(BaseModel):
    build: str
    name: str = "kabanero-otc broker-api"
    service: str = "broker-api"
    version: str = Field(description="package version (as on every service's /version)")


# --- stored record ------------------------------------------------------------------------------


class Binding(BaseModel):
    id: str
    credentials: str = Field(description="Fernet token of the toolchain_credentials")
    bound_at: datetime


class OutboxEntry(BaseModel):
    id: str
    revision: int
    routing_key: str
    event: dict[str, Any]
    _cloud: CloudEvent | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, event: CloudEvent, revision: int) -> OutboxEntry:
        """The entry of an event this process just built (and validated): not validated again,
        and published from ``event`` itself (:meth:`cloud_event`)."""
        entry = cls.model_construct(
            id=event.id, revision=revision, routing_key=event.routing_key, event=event.model_dump(mode="json")
        )
        entry._cloud = event
        return entry

    def cloud_event(self) -> CloudEvent:
        """The event to publish: the one built in this process, else (read back) validated once."""
        if self._cloud is None:
            self._cloud = CloudEvent.model_validate(self.event)
        return self._cloud


class InstanceRecord(BaseModel):
    """One ``service_instances`` document; ``_id`` is ``<kind>:<sid>``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    key: str = Field(alias="_id")
    schema_version: int = SCHEMA_VERSION
    kind: ServiceKind
    instance_id: str
    service_id: str
    state: Literal["active", "deleted"] = "active"
    organization_guid: str | None = None
    parameters: Parameters
    dashboard_url: str
    service_credentials: str | None = Field(default=None, description="Fernet token")
    toolchains: list[Binding] = Field(default_factory=list)
    events_tools: list[str] = Field(
        default_factory=list,
        description="toolchains to which this Kabanero service asked otc-writer to add a Kabanero "
        "Events tool (parameters.events = auto) and has not asked to remove it yet",
    )
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    revision: int = 0
    outbox: list[OutboxEntry] = Field(default_factory=list)

    @property
    def toolchain_ids(self) -> list[str]:
        return [b.id for b in self.toolchains]

    def document(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")

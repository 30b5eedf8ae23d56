"""CloudEvents envelope and the versioned data models every service exchanges (docs/architecture.md §4).

The envelope is CloudEvents 1.0 structured JSON. The routing key is the CloudEvent ``type`` minus
``io.kabanero.otc.``. Every ``data`` model carries ``schema_version`` so a consumer can refuse a
shape it does not know instead of misreading it. ``revision`` is monotonic per source key: a
consumer that has applied revision N acknowledges and skips anything <= N (stale).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.urls import without_credentials

TYPE_PREFIX = "io.kabanero.otc."
CONTENT_TYPE = "application/cloudevents+json"
MAX_EVENT_ID_BYTES = 255  # the CloudEvent id is also the AMQP message_id, a shortstr
TEKTON_SCOPE_PREFIX = "tekton:"


def event_id(kind: str, key: str, revision: int, part: int | None = None) -> str:
    """Deterministic CloudEvent id of one revision of one record (the same on every replay, so
    consumers can dedupe): ``<kind>:<key>:<revision>``, or ``<kind>:sha256-<hex of key>:<revision>``
    when that would not fit an AMQP message_id (the event's subject still names the key). A
    snapshot published in several parts (:mod:`shared.snapshot_parts`) adds ``:<part>``."""
    tail = f":{revision}" if part is None else f":{revision}:{part}"
    readable = f"{kind}:{key}{tail}"
    if len(readable.encode()) <= MAX_EVENT_ID_BYTES:
        return readable
    return f"{kind}:sha256-{hashlib.sha256(key.encode()).hexdigest()}{tail}"


def canonical_json(value: Any) -> str:
    """The one serialisation content hashes are made of: sorted keys, no whitespace, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(value: Any) -> str:
    """sha256 of :func:`canonical_json` (the ``content_hash`` fields below, and tool contents):
    same content, same hash, whatever the key order."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def instance_scope(cluster: str, namespace: str) -> str:
    """The identity of a Kabanero instance (one per namespace) in keys and stores: ``cluster/namespace``."""
    return f"{cluster}/{namespace}"


def tekton_scope(cluster: str, namespace: str) -> str:
    """The scope of the Tekton cards of one namespace: ``tekton:cluster/namespace``. The prefix keeps
    it apart from the Kabanero instance of the same namespace in keys and stores."""
    return f"{TEKTON_SCOPE_PREFIX}{cluster}/{namespace}"


def tekton_cluster_scope(cluster: str) -> str:
    """The scope of a Tekton service: every card scope of the cluster (``tekton:cluster``), filtered
    by the service's ``namespaces``."""
    return f"{TEKTON_SCOPE_PREFIX}{cluster}"


def normalize_repository_url(url: str) -> str:
    """One spelling per repository (``Repository.url``): lower-case scheme and host, no userinfo,
    query or fragment (nor a credential in one: docs/design.md, "What never leaves the cluster"),
    no ``.git``, no trailing ``/``. Text that is no URL (no scheme) only loses a ``user@`` prefix,
    the ``.git`` and trailing ``/``."""
    url = without_credentials(url.strip())
    parts = urlsplit(url)
    if not parts.scheme:
        return url.rstrip("/").removesuffix(".git")
    path = parts.path.rstrip("/").removesuffix(".git").rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


ServiceKind = Literal["kabanero", "kabanero-events", "tekton"]
ServiceEvent = Literal["provisioned", "updated", "bound", "unbound", "deprovisioned"]


class RoutingKeys:
    """Every routing key of the ``kabanero-otc.events`` exchange."""

    @staticmethod
    def service(kind: ServiceKind, event: ServiceEvent) -> str:
        return f"service.{kind}.{event}"

    INSTANCE_CHANGED = "kabanero.instance.changed"
    INSTANCE_DELETED = "kabanero.instance.deleted"
    TRIGGER_CREATED = "kabanero.trigger.created"
    TRIGGER_UPDATED = "kabanero.trigger.updated"
    TRIGGER_DELETED = "kabanero.trigger.deleted"
    SNAPSHOT = "kabanero.snapshot"
    # The Tekton family (docs/architecture.md §4; docs/design.md, "The Tekton broker").
    TEKTON_INSTALLATION = "tekton.installation.changed"
    CARD_CREATED = "tekton.card.created"
    CARD_UPDATED = "tekton.card.updated"
    CARD_DELETED = "tekton.card.deleted"
    TEKTON_SNAPSHOT = "tekton.snapshot"
    COMMAND_OUTCOME = "kabanero.command.outcome"
    TOOL_APPLY = "otc.tool.apply"
    TOOL_REMOVE = "otc.tool.remove"
    # otc-writer -> broker-api: what became of one tool (not ``otc.tool.*``: that is the commands').
    TOOL_OUTCOME = "otc.outcome.tool"
    CONTROL_RESYNC = "control.resync"


class CloudEvent(BaseModel):
    """CloudEvents 1.0 structured-mode envelope."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    datacontenttype: str = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def routing_key(self) -> str:
        return self.type.removeprefix(TYPE_PREFIX)

    @classmethod
    def for_data(
        cls,
        routing_key: str,
        data: BaseModel,
        *,
        source: str,
        subject: str | None = None,
        id: str | None = None,
    ) -> CloudEvent:
        return cls(
            id=id or str(uuid.uuid4()),
            source=source,
            type=TYPE_PREFIX + routing_key,
            subject=subject,
            data=data.model_dump(mode="json"),
        )


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Parted(_Data):
    """A snapshot, published whole or, over the watcher's ``SNAPSHOT_PART_BYTES``, as ``parts``
    events of one revision, each with its share of the two ``split_fields`` (items, known
    revisions) and every other field whole (docs/design.md, "Snapshots over RabbitMQ's message
    size"). A consumer applies a revision only once it holds all its parts; absent = 1 of 1."""

    split_fields: ClassVar[tuple[str, str]]

    part: int = Field(default=1, ge=1, description="this event's part of the snapshot, 1..parts")
    parts: int = Field(default=1, ge=1, description="how many events carry this snapshot revision")

    @model_validator(mode="after")
    def _part_within_parts(self) -> Self:
        if self.part > self.parts:
            raise ValueError(f"part: {self.part} is beyond parts: {self.parts}")
        return self


# --- broker-api: service.<kind>.<event> -------------------------------------------------------


class ServiceParameters(_Data):
    """Which Kabanero instance a service stands for (cluster + namespace [+ name]); for a Tekton
    service, which installation (cluster) and which of its namespaces (``namespaces``, None: all)."""

    cluster: str
    namespace: str = ""
    name: str | None = None
    label: str = ""
    # A Kabanero service's ``parameters.events``; None for the other kinds.
    events: Literal["auto", "manual"] | None = None
    # A Kabanero service that creates its Kabanero CR (``parameters.create``).
    create: bool = False
    # Tekton services only: the namespaces whose cards are mirrored (None: every namespace).
    namespaces: list[str] | None = None

    @property
    def scope(self) -> str:
        return instance_scope(self.cluster, self.namespace)

    def mirrors(self, namespace: str) -> bool:
        """Whether a Tekton service with these parameters mirrors the cards of ``namespace``."""
        return self.namespaces is None or namespace in self.namespaces


class ServiceEventData(_Data):
    """A committed change of one OTC service instance. No secrets, ever."""

    schema_version: Literal[1] = 1
    kind: ServiceKind
    instance_id: str
    service_id: str
    organization_guid: str | None = None
    parameters: ServiceParameters
    dashboard_url: str | None = None
    toolchains: list[str] = Field(default_factory=list, description="bound toolchain ids after the change")
    toolchain_id: str | None = Field(default=None, description="the toolchain a bind/unbind concerns")
    revision: int = Field(ge=0, description="record revision; monotonic per instance")
    deleted: bool = False
    # With ``parameters.create``, the Kabanero spec the watcher of ``parameters.cluster`` creates or
    # applies (validated against the CRD by broker-api).
    instance_spec: dict[str, Any] | None = None

    @property
    def scope(self) -> str:
        """What the service stands for: a Kabanero instance, or (Tekton) a cluster's installation."""
        if self.kind == "tekton":
            return tekton_cluster_scope(self.parameters.cluster)
        return self.parameters.scope


# --- kabanero-watcher: kabanero.* ---------------------------------------------------------------


class InstanceRef(_Data):
    """A Kabanero instance is (cluster, namespace); ``name`` is the Kabanero CR's name."""

    cluster: str
    namespace: str
    name: str | None = None

    @property
    def scope(self) -> str:
        return instance_scope(self.cluster, self.namespace)


RepositoryKind = Literal["stack-hub", "pipeline", "gitops", "trigger", "unknown"]


class Repository(_Data):
    """A git repository an instance uses (docs/design.md, "Kabanero semantics").

    One entry per URL: ``kinds`` and ``refs`` list every kind and ref the repository appears with
    (a stack hub that also holds pipelines is both), in the order seen; ``source`` is where it was
    first seen.
    """

    url: str = Field(description="normalized https URL of the repository (no .git, no trailing /)")
    kinds: list[RepositoryKind] = Field(min_length=1, description="every kind, in order seen")
    refs: list[str] = Field(default_factory=list, description="every tag/ref, in order seen")
    source: str | None = Field(default=None, description="where in the cluster it came from (first)")

    @classmethod
    def of(
        cls, url: str, kind: RepositoryKind, *, ref: str | None = None, source: str | None = None
    ) -> Repository:
        return cls(url=url, kinds=[kind], refs=[ref] if ref else [], source=source)

    def merged(self, other: Repository) -> Repository:
        """This repository also seen as ``other`` (same URL): first source kept, lists unioned."""
        kinds = self.kinds + [k for k in other.kinds if k not in self.kinds]
        refs = self.refs + [r for r in other.refs if r not in self.refs]
        return self.model_copy(update={"kinds": kinds, "refs": refs})


class InstanceData(_Data):
    """``kabanero.instance.changed|deleted``: an instance's identity, version and repositories."""

    schema_version: Literal[1] = 1
    instance: InstanceRef
    uid: str | None = None
    version: str | None = Field(default=None, description="Kabanero spec.version")
    repositories: list[Repository] = Field(default_factory=list)
    content_hash: str
    revision: int = Field(ge=0)
    deleted: bool = False


class TriggerKey(_Data):
    """Stable identity of one event trigger (docs/reference/kabanero.md §6)."""

    cluster: str
    namespace: str
    generation: Literal["mediation", "legacy"]
    owner: str = Field(description="EventMediator name (mediation) or Kabanero name (legacy)")
    name: str = Field(description="mediation name (mediation) or trigger id (legacy)")

    @property
    def id(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.generation}/{self.owner}/{self.name}"


class TriggerData(_Data):
    """``kabanero.trigger.created|updated|deleted`` and the items of a snapshot."""

    schema_version: Literal[1] = 1
    key: TriggerKey
    instance: InstanceRef
    content: dict[str, Any] = Field(default_factory=dict, description="the trigger's spec slice")
    content_hash: str
    version: str | None = Field(default=None, description="legacy sha256, or content hash")
    url: str | None = Field(default=None, description="archive or endpoint URL where known")
    repositories: list[Repository] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)
    revision: int = Field(ge=0)
    deleted: bool = False


class SnapshotData(_Parted):
    """``kabanero.snapshot``: the whole derived state of one instance, for level-triggered reconcile."""

    split_fields: ClassVar[tuple[str, str]] = ("triggers", "trigger_revisions")

    schema_version: Literal[1] = 1
    instance: InstanceRef
    exists: bool = Field(description="False when the instance has no Kabanero CR (any more)")
    version: str | None = None
    repositories: list[Repository] = Field(default_factory=list)
    triggers: list[TriggerData] = Field(default_factory=list)
    revision: int = Field(ge=0, description="snapshot sequence per instance")
    # A snapshot is a separate sequence, so without these a consumer could not tell whether a
    # snapshot processed late (e.g. from a retry queue) is older than the instance or trigger
    # events it has already applied.
    instance_revision: int = Field(
        ge=0,
        description="revision of the last kabanero.instance.* event published for this instance when "
        "the snapshot was taken (0: none yet); `repositories` are that revision's",
    )
    trigger_revisions: dict[str, int] = Field(
        description="TriggerKey.id -> revision of the last kabanero.trigger.* event published for "
        "every trigger key of this instance when the snapshot was taken, deleted keys included",
    )


CommandOutcome = Literal["created", "updated", "unchanged", "deleted", "absent", "refused", "failed"]


class CommandOutcomeData(_Data):
    """``kabanero.command.outcome``: what the watcher of ``cluster`` did with the Kabanero CR of a
    Kabanero service that creates its instance (``parameters.create``), for the service's dashboard.

    ``revision`` is the service record's revision the command carried: a consumer keeps the highest
    and skips the rest, so replays and a republish after a crash change nothing. No secrets: the
    message is ours or the API server's ``Status.message``."""

    schema_version: Literal[1] = 1
    instance_id: str = Field(description="the OTC service instance id (sid)")
    cluster: str
    namespace: str
    name: str = Field(description="the Kabanero CR's name")
    revision: int = Field(ge=0, description="revision of the service event this outcome answers")
    outcome: CommandOutcome
    message: str = Field(description="what happened, with the API server's message when it refused")
    at: datetime = Field(description="when the watcher finished the command")


# --- kabanero-watcher, Tekton family: tekton.* ------------------------------------------------

TektonKind = Literal["Pipeline", "EventListener"]


class TektonInstallationData(_Data):
    """``tekton.installation.changed``: the Tekton installation the watcher of ``cluster`` found
    (or why it found none), and what it mirrors. broker-api shows it on a Tekton service's page.

    Detection follows Tekton's own tools (docs/design.md, "Tekton semantics"): the OpenShift
    Pipelines ``Config`` ``cluster``, tektoncd/operator's ``TektonConfig``/``TektonPipeline``, the
    ``pipelines-info`` ConfigMap, then the controller Deployment's labels."""

    schema_version: Literal[1] = 1
    cluster: str
    found: bool = Field(description="False: no Tekton Pipelines installation in the cluster")
    reason: str = Field(description="how it was detected, or why none was found")
    pipelines_version: str | None = None
    triggers_version: str | None = None
    controller_namespace: str | None = None
    detected_by: str | None = Field(default=None, description="the probe that found it")
    dashboard_url: str | None = Field(default=None, description="Tekton Dashboard base URL (Route/Ingress)")
    pipelines_api: str | None = Field(default=None, description="group/version Pipelines are read in")
    eventlisteners_api: str | None = Field(
        default=None, description="group/version EventListeners are read in"
    )
    cards: dict[str, int] = Field(default_factory=dict, description="namespace -> live cards")
    last_change: str | None = Field(
        default=None, description="the last card change, e.g. 'created ns/Pipeline/x'"
    )
    last_change_at: datetime | None = None
    content_hash: str
    revision: int = Field(ge=0)


class TektonCardKey(_Data):
    """Stable identity of one Tekton card: the object's cluster, namespace, kind and name."""

    cluster: str
    namespace: str
    kind: TektonKind
    name: str

    @property
    def id(self) -> str:
        return f"{TEKTON_SCOPE_PREFIX}{self.cluster}/{self.namespace}/{self.kind}/{self.name}"


class TektonCardData(_Data):
    """``tekton.card.created|updated|deleted`` and the items of a ``tekton.snapshot``: what the
    read-only card of one Pipeline or EventListener shows. Only these fields are content: a
    status-only change or a new ``resourceVersion`` changes none of them."""

    schema_version: Literal[1] = 1
    key: TektonCardKey
    api_version: str = Field(description="the group/version the object was read in")
    pipelines_version: str | None = None
    triggers_version: str | None = None
    dashboard_url: str | None = Field(default=None, description="Tekton Dashboard deep link, if any")
    external_url: str | None = Field(
        default=None, description="EventListener: Route/Ingress URL of el-<name>"
    )
    tasks: list[str] = Field(default_factory=list, description="Pipeline: its task names, in order")
    stack: str | None = Field(default=None, description="Pipeline: the Kabanero Stack that owns it")
    triggers: list[str] = Field(default_factory=list, description="EventListener: 'name (interceptors)'")
    content_hash: str
    revision: int = Field(ge=0)
    deleted: bool = False

    @property
    def scope(self) -> str:
        return tekton_scope(self.key.cluster, self.key.namespace)


class TektonSnapshotData(_Parted):
    """``tekton.snapshot``: every card of one namespace of a cluster, for level-triggered reconcile
    (the Tekton counterpart of :class:`SnapshotData`)."""

    split_fields: ClassVar[tuple[str, str]] = ("cards", "card_revisions")

    schema_version: Literal[1] = 1
    cluster: str
    namespace: str
    cards: list[TektonCardData] = Field(default_factory=list)
    revision: int = Field(ge=0, description="snapshot sequence per namespace")
    card_revisions: dict[str, int] = Field(
        default_factory=dict,
        description="TektonCardKey.id -> revision of the last tekton.card.* event published for every "
        "card key of the namespace when the snapshot was taken, deleted keys included",
    )

    @property
    def scope(self) -> str:
        return tekton_scope(self.cluster, self.namespace)


# --- github-linker -> otc-writer: otc.tool.* --------------------------------------------------


class ToolCommand(_Data):
    """``otc.tool.apply|remove``: make one tool exist (with exactly this content) or not exist.

    ``key`` is deterministic (same desired tool -> same key), so replays are idempotent; ``name``
    is the OTC tool name used to resolve ambiguous creates.
    """

    schema_version: Literal[1] = 1
    purpose: str = Field(description="ledger namespace, e.g. 'github'")
    key: str = Field(min_length=1, max_length=512)
    toolchain_id: str
    tool_type_id: str
    name: str = Field(min_length=1, max_length=128)
    parameters: dict[str, Any] = Field(default_factory=dict)
    revision: int = Field(ge=0, description="monotonic per key; older commands are skipped")


# --- otc-writer -> broker-api: otc.outcome.tool ----------------------------------------------

ToolState = Literal["applied", "removed", "pending", "held", "refused", "failed"]
ToolChange = Literal["created", "updated", "adopted", "deleted", "absent"]
MAX_OUTCOME_MESSAGE = 1000


class ToolOutcomeData(_Data):
    """``otc.outcome.tool``: what otc-writer's last attempt did with one tool of one toolchain, for
    the page of the services that keep it (broker-api). Published after the attempt ended (the
    ledger committed, recorded the refusal or the error), best effort: a lost one is corrected by
    the tool's next outcome.

    Ordered per tool by (``revision``, ``at``): a consumer keeps the newest and skips the rest, so a
    replay changes nothing. No secrets: the message is OTC's (IBM message and transaction id)."""

    schema_version: Literal[1] = 1
    purpose: str = Field(description="ledger purpose, e.g. 'github', 'kabanero-trigger', 'tekton-card'")
    key: str = Field(min_length=1, max_length=512)
    toolchain_id: str
    scope: str | None = Field(
        default=None, description="what the tool belongs to (instance, Tekton namespace)"
    )
    name: str | None = Field(default=None, description="the OTC tool name")
    state: ToolState = Field(
        description="applied | removed | pending (a transient OTC error: retried) | held (OTC down or "
        "rate limiting: retried after `until`) | refused (OTC refused this content: not retried until it "
        "changes) | failed (a permanent error other than a refusal: dead-lettered)"
    )
    change: ToolChange | None = Field(default=None, description="what the write did, when applied or removed")
    revision: int = Field(ge=0, description="the desired revision the attempt was for; monotonic per tool")
    message: str | None = Field(default=None, max_length=MAX_OUTCOME_MESSAGE, description="OTC's message")
    until: datetime | None = Field(default=None, description="held: OTC is not called before then")
    dead_letter: str | None = Field(
        default=None, description="the id of the message dead-lettered because of this tool, if any"
    )
    link: str | None = Field(
        default=None, description="the tool's http(s) link (repository, Tekton Dashboard)"
    )
    at: datetime = Field(description="when the attempt ended (applied: when the tool reached OTC)")

    @property
    def id(self) -> str:
        """The tool's identity: otc-writer's ledger id."""
        return f"{self.purpose}|{self.toolchain_id}|{self.key}"


# --- kabanero-otc CLI -> kabanero-watcher: control.resync ---------------------------------------


class ResyncRequest(_Data):
    """``control.resync``: ask the leading watcher of ``cluster`` (every cluster when None) for fresh
    snapshots of ``namespace`` (every instance when None). Sent with AMQP ``reply_to`` and
    ``correlation_id``; each leader that took snapshots answers with a :class:`ResyncReply`."""

    schema_version: Literal[1] = 1
    cluster: str | None = None
    namespace: str | None = None


class ResyncReply(_Data):
    """A leader's answer: the snapshot revision it published per namespace (otc-writer has caught
    up with the resync once its projection holds these revisions)."""

    schema_version: Literal[1] = 1
    cluster: str
    holder: str = Field(description="lease holder identity of the answering watcher")
    snapshots: dict[str, int] = Field(default_factory=dict, description="namespace -> snapshot revision")
    # The Tekton family's snapshots (tekton.snapshot), namespace -> revision.
    tekton_snapshots: dict[str, int] = Field(
        default_factory=dict, description="namespace -> tekton.snapshot revision"
    )

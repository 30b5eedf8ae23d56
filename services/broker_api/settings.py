"""broker-api settings (environment names are contracts, docs/architecture.md §2).

Each field's description is its row in docs/deployment.md §2.2 (``python -m scripts.settings_doc``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.broker_api.models import BROKERS
from shared.settings import CommonSettings, comma_list
from shared.settings import load_settings as shared_load_settings

DEFAULT_DASHBOARD_PATTERN = "https://kabanero-landing-{namespace}.apps.{cluster}.example.com/"
# The Tekton Dashboard's Route as Kabanero 0.6-0.9 installed it: ``tekton-dashboard`` in
# ``tekton-pipelines`` (OpenShift's default host ``<route>-<namespace>.<apps domain>``).
DEFAULT_TEKTON_DASHBOARD_PATTERN = "https://tekton-dashboard-tekton-pipelines.apps.{cluster}.example.com/"
_PLACEHOLDERS = {
    "cluster": "c",
    "namespace": "n",
    "name": "k",
    "instance_id": "i",
    "service_id": "s",
}
_TEKTON_PLACEHOLDERS = {"cluster": "c", "instance_id": "i", "service_id": "s"}


def _check_pattern(v: str, placeholders: dict[str, str]) -> str:
    try:
        v.format(**placeholders)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"unknown or malformed placeholder {exc}; allowed: {', '.join('{' + p + '}' for p in placeholders)}"
        ) from None
    return v


class Settings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    broker_id: str = Field(min_length=1, description="HTTP Basic user name OTC presents (secret)")
    broker_secret: SecretStr = Field(description="HTTP Basic password OTC presents (secret)")
    credentials_key: SecretStr = Field(
        description="Fernet key (urlsafe base64 of 32 bytes) encrypting stored OTC credentials (secret)"
    )
    allowed_clusters: str = Field(
        default="default",
        description="comma-separated cluster names accepted in `parameters.cluster`; the first is the "
        "default. Must contain the watcher's `CLUSTER_NAME`",
    )
    default_namespace: str = Field(default="kabanero", description="`parameters.namespace` when omitted")
    kabanero_dashboard_url_pattern: str = Field(
        default=DEFAULT_DASHBOARD_PATTERN,
        description="`dashboard_url` template; placeholders `{cluster}`, `{namespace}`, `{name}` (the "
        "Kabanero CR's name, `kabanero` when unset), `{instance_id}`, `{service_id}`",
    )
    tekton_dashboard_url_pattern: str = Field(
        default=DEFAULT_TEKTON_DASHBOARD_PATTERN,
        description="a Tekton service's `dashboard_url` when `BROKER_PUBLIC_URL` is unset (the Tekton "
        "Dashboard's Route as Kabanero installed it: `tekton-dashboard` in `tekton-pipelines`); placeholders "
        "`{cluster}`, `{instance_id}`, `{service_id}`",
    )
    broker_public_url: str | None = Field(
        default=None,
        description="base URL at which browsers reach broker-api (e.g. `https://kotc.example.com`); set, a "
        "Kabanero service with `parameters.create` gets `<it>/dashboard/<sid>/<token>` as its "
        "`dashboard_url`: the cluster side's outcome, no credentials needed (docs/design.md, \"The "
        "service's dashboard\"), and every Tekton service `<it>/dashboard/tekton/<sid>/<token>`: the "
        'installation the watcher found (docs/design.md, "The Tekton broker"); unset, the kind\'s landing '
        "pattern. Expose `/dashboard/` of broker-api to the users' browsers (the broker routes need not be)",
    )
    brokers: str = Field(
        default=",".join(BROKERS),
        description="the brokers this deployment serves (comma-separated); the routes of the others answer "
        "404 (§1.3). An unknown name stops the service at start",
    )
    auto_events_service: Literal["auto", "manual"] = Field(
        default="manual",
        description="`parameters.events` of a Kabanero service that omits it: `auto` adds a Kabanero Events "
        'tool to each toolchain the service is bound to (docs/design.md, "An auto-created Kabanero '
        'Events service")',
    )
    outbox_drain_interval_s: float = Field(
        default=5.0, gt=0, description="retry interval of events not yet published"
    )
    outbox_release_delay_s: float = Field(
        default=0.2,
        ge=0,
        le=5,
        description="how long published events stay in the outbox (and the publisher lease held) "
        "before one bulk write releases those of every request of that window, unless the next "
        "write on the same instance drops them first (docs/design.md)",
    )
    build_version: str = Field(default="0.1.0", description="reported by `GET /version`")
    max_body_bytes: int = Field(default=64 * 1024, gt=0, description="larger request bodies get 413")
    max_connections: int = Field(
        default=512,
        ge=1,
        description="open HTTP connections in total. At the cap a new connection displaces one still "
        'waiting for its request head (docs/design.md, "broker-api below the routes"); when every one is '
        "busy it is admitted over the cap: probes and `/status` served, anything else 503 with `Retry-After`",
    )
    max_connections_per_client: int = Field(
        default=256,
        ge=1,
        description="open HTTP connections per client address; past it the client's further requests get "
        "429 with `Retry-After` (probes and `/status` still served). Everything OTC sends comes from one "
        "address (its NAT, or the ingress in front of broker-api): keep it at least OTC's concurrency and "
        "below `MAX_CONNECTIONS`",
    )
    overflow_connections: int = Field(
        default=256,
        ge=1,
        description="connections admitted over a cap at once (each answered and closed at once); only past "
        "these, with every one busy, is a connection reset. Descriptors: at most `MAX_CONNECTIONS` + "
        "`OVERFLOW_CONNECTIONS` for HTTP",
    )
    header_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="a connection must deliver a complete request head within this after connecting or "
        "after its previous answer, else it is closed",
    )
    body_timeout_s: float = Field(
        default=15.0, gt=0, description="a request body not received within this gets 408"
    )
    store_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="bound of one request's MongoDB work (server selection included): a down or hung "
        "MongoDB answers 503 within it; `/status`'s checks get 1 s",
    )
    auth_failures_per_minute: int = Field(
        default=20,
        ge=1,
        description="failed authentications per client address and minute before further failures get 429 "
        "with `Retry-After` (the right credentials always pass)",
    )

    @field_validator("broker_secret")
    @classmethod
    def _secret_not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value():
            raise ValueError("must not be empty")
        return v

    @field_validator("credentials_key")
    @classmethod
    def _fernet_key(cls, v: SecretStr) -> SecretStr:
        try:
            raw = base64.urlsafe_b64decode(v.get_secret_value().encode())
        except (binascii.Error, ValueError):
            raise ValueError("must be urlsafe base64 (a Fernet key)") from None
        if len(raw) != 32:
            raise ValueError("must decode to exactly 32 bytes (a Fernet key)")
        return v

    @field_validator("allowed_clusters")
    @classmethod
    def _clusters(cls, v: str) -> str:
        if not comma_list(v):
            raise ValueError("must name at least one cluster")
        return v

    @field_validator("kabanero_dashboard_url_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return _check_pattern(v, _PLACEHOLDERS)

    @field_validator("tekton_dashboard_url_pattern")
    @classmethod
    def _tekton_pattern(cls, v: str) -> str:
        return _check_pattern(v, _TEKTON_PLACEHOLDERS)

    @field_validator("brokers")
    @classmethod
    def _brokers(cls, v: str) -> str:
        names = comma_list(v)
        if not names:
            raise ValueError(f"must name at least one broker of: {', '.join(BROKERS)}")
        unknown = [b for b in names if b not in BROKERS]
        if unknown:
            raise ValueError(f"unknown broker {unknown[0]!r}; known: {', '.join(BROKERS)}")
        return v

    @field_validator("broker_public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be an http(s) base URL without query or fragment")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials")
        return v.rstrip("/")

    @property
    def clusters(self) -> tuple[str, ...]:
        return comma_list(self.allowed_clusters)

    @property
    def default_cluster(self) -> str:
        return self.clusters[0]

    @property
    def served(self) -> tuple[str, ...]:
        """The brokers (context roots) this deployment serves, in :data:`BROKERS` order."""
        names = set(comma_list(self.brokers))
        return tuple(b for b in BROKERS if b in names)

    def serves(self, broker: str) -> bool:
        return broker in self.served


def load_settings() -> Settings:
    """Read the environment; a clear error naming each bad variable (values are never echoed)."""
    return shared_load_settings(Settings, service="broker-api")

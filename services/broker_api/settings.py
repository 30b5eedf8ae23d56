"""broker-api settings (environment names are contracts, docs/architecture.md §2; extra ones in README).

| env | default | meaning |
|---|---|---|
| ``BROKER_ID`` / ``BROKER_SECRET`` | required | HTTP Basic credentials OTC presents |
| ``CREDENTIALS_KEY`` | required | Fernet key (urlsafe base64, 32 bytes) encrypting stored credentials |
| ``HTTP_PORT`` | 8080 | API + /healthz /readyz /metrics /openapi.json (0 = any free port) |
| ``ALLOWED_CLUSTERS`` | ``default`` | comma-separated cluster names accepted in ``parameters.cluster``; the
  first one is the default |
| ``DEFAULT_NAMESPACE`` | ``kabanero`` | ``parameters.namespace`` when omitted |
| ``KABANERO_DASHBOARD_URL_PATTERN`` | see below | ``dashboard_url`` template; placeholders ``{cluster}``,
  ``{namespace}``, ``{name}`` (Kabanero CR name, ``kabanero`` when unset), ``{instance_id}``, ``{service_id}`` |
| ``BROKER_PUBLIC_URL`` | unset | the base URL browsers reach broker-api at (e.g. ``https://kotc.example.com``):
  a Kabanero service with ``parameters.create`` then gets ``<it>/dashboard/<sid>/<token>`` as its
  ``dashboard_url`` (the cluster side's outcome); unset, it gets the landing page pattern like the others |
| ``TEKTON_DASHBOARD_URL_PATTERN`` | see below | a Tekton service's ``dashboard_url`` when ``BROKER_PUBLIC_URL``
  is unset; placeholders ``{cluster}``, ``{instance_id}``, ``{service_id}`` |
| ``BROKERS`` | all three | comma-separated brokers this deployment serves (``kabanero-broker``,
  ``kabanero-events-broker``, ``tekton-broker``); the routes of the others answer 404 |
| ``AUTO_EVENTS_SERVICE`` | ``manual`` | ``parameters.events`` of a Kabanero service that omits it:
  ``auto`` (binding adds a Kabanero Events tool to the toolchain) or ``manual`` |
| ``OUTBOX_DRAIN_INTERVAL_S`` | 5 | how often unpublished events are retried |
| ``BUILD_VERSION`` | package version | reported by ``GET /version`` |
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.broker_api.models import BROKERS
from shared.settings import CommonSettings
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

    broker_id: str = Field(min_length=1)
    broker_secret: SecretStr
    credentials_key: SecretStr
    allowed_clusters: str = "default"
    default_namespace: str = "kabanero"
    kabanero_dashboard_url_pattern: str = DEFAULT_DASHBOARD_PATTERN
    tekton_dashboard_url_pattern: str = DEFAULT_TEKTON_DASHBOARD_PATTERN
    broker_public_url: str | None = None
    brokers: str = ",".join(BROKERS)
    auto_events_service: Literal["auto", "manual"] = "manual"
    outbox_drain_interval_s: float = Field(default=5.0, gt=0)
    build_version: str = "0.1.0"
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    max_connections: int = Field(default=512, ge=1, description="open HTTP connections, in total")
    max_connections_per_client: int = Field(
        default=256, ge=1, description="per client address (OTC behind its NAT is one; docs/design.md)"
    )
    overflow_connections: int = Field(
        default=256, ge=1, description="over a cap, while every connection under it is busy: probes only"
    )
    header_timeout_s: float = Field(
        default=15.0, gt=0, description="to deliver a request head after connecting or the last answer"
    )
    body_timeout_s: float = Field(default=15.0, gt=0, description="to deliver a request body")
    store_timeout_s: float = Field(
        default=5.0, gt=0, description="bound of one request's MongoDB work; /status's checks get 1 s"
    )
    auth_failures_per_minute: int = Field(
        default=20, ge=1, description="failed authentications per client before 429"
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
        if not [c for c in v.split(",") if c.strip()]:
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
        names = [b.strip() for b in v.split(",") if b.strip()]
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
        return tuple(c.strip() for c in self.allowed_clusters.split(",") if c.strip())

    @property
    def default_cluster(self) -> str:
        return self.clusters[0]

    @property
    def served(self) -> tuple[str, ...]:
        """The brokers (context roots) this deployment serves, in :data:`BROKERS` order."""
        names = {b.strip() for b in self.brokers.split(",")}
        return tuple(b for b in BROKERS if b in names)

    def serves(self, broker: str) -> bool:
        return broker in self.served


def load_settings() -> Settings:
    """Read the environment; a clear error naming each bad variable (values are never echoed)."""
    return shared_load_settings(Settings, service="broker-api")

"""kabanero-watcher settings (docs/architecture.md §2: ``CLUSTER_NAME``, ``WATCH_NAMESPACES``)."""

from __future__ import annotations

import os
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import CommonSettings


def _default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(CommonSettings):
    """Environment of the watcher; durations in seconds."""

    # Each service its own default port, so all four run side by side on one host (the images set 8080).
    http_port: int = Field(default=8081, ge=0, le=65535)
    cluster_name: str = "default"
    # Kabanero services with parameters.create: may the watcher create a missing namespace first?
    create_namespaces: bool = False
    # Comma-separated; empty = all namespaces (one cluster-wide watch per resource type).
    watch_namespaces: Annotated[tuple[str, ...], NoDecode] = ()
    # The families this watcher mirrors: a Tekton-only install watches no Kabanero kind (and needs
    # no RBAC for them).
    watch_families: Annotated[tuple[Literal["kabanero", "tekton"], ...], NoDecode] = ("kabanero", "tekton")
    # Where a Tekton installation's controllers, pipelines-info ConfigMap and dashboard may live
    # (tkn's and the Tekton Dashboard's search list): watched whatever WATCH_NAMESPACES says.
    tekton_install_namespaces: Annotated[tuple[str, ...], NoDecode] = (
        "tekton-pipelines",
        "openshift-pipelines",
    )
    # The Tekton Dashboard's base URL when no Route/Ingress shows it (e.g. behind a proxy); None: found.
    tekton_dashboard_url: str | None = None
    # Where the API server is: KUBE_API_URL (plain http, e.g. the emulator) wins, then in-cluster
    # config (KUBERNETES_SERVICE_HOST set), then the KUBECONFIG file (default ~/.kube/config).
    kube_api_url: str | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    # Set by Kubernetes in every pod: selects in-cluster config (service account token).
    kubernetes_service_host: str | None = None
    # Like kopf: no event nor bookmark for this long means a silently dead stream -> reconnect.
    inactivity_timeout_s: float = Field(default=70.0, gt=0)
    # Server-side watch timeout; the stream then ends normally and we resume from the last RV.
    watch_timeout_s: int = Field(default=300, ge=1)
    # Bound on list/lease requests and on opening a watch stream.
    kube_request_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_backoff_s: float = Field(default=1.0, gt=0)
    reconnect_backoff_max_s: float = Field(default=30.0, gt=0)
    # The events CRDs are optional (Kabanero 0.6-0.8 has none): re-probe this often while absent.
    optional_reprobe_s: float = Field(default=60.0, gt=0)
    # 'auto': legacy spec.triggers[] are triggers only while the events CRDs are absent.
    legacy_triggers: Literal["auto", "always", "never"] = "auto"
    # 'url': a legacy trigger is the first spec.triggers[] entry with a flat `url`, as kabanero-events
    # reads it (GetTriggerInfo). 'any' (an extension, off by default): entries located by https.url
    # or gitRelease count too, for clusters whose triggers use the 0.6+ schema fields.
    legacy_trigger_fields: Literal["url", "any"] = "url"
    snapshot_interval_s: float = Field(default=600.0, gt=0)
    publish_retry_s: float = Field(default=2.0, gt=0)
    # Namespaces reconciled (or snapshotted) at once; within one namespace events stay sequential.
    publish_concurrency: int = Field(default=16, ge=1)
    # Events of one namespace published (and recorded) per batch: a namespace of 20,000 triggers
    # makes progress batch by batch instead of holding them all in one.
    publish_batch: int = Field(default=1000, ge=1)
    # /healthz fails when the leading watcher saw nothing (event, bookmark, list, stream end) this long.
    liveness_bound_s: float = Field(default=180.0, gt=0)
    lease_name: str = "kabanero-watcher"
    lease_namespace: str = "kabanero"
    lease_duration_s: int = Field(default=15, ge=1)
    lease_renew_s: float = Field(default=5.0, gt=0)
    holder_identity: str = Field(default_factory=_default_identity)

    @field_validator("watch_namespaces", "watch_families", "tekton_install_namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("watch_families")
    @classmethod
    def _some_family(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one family (kabanero, tekton)")
        return tuple(dict.fromkeys(value))

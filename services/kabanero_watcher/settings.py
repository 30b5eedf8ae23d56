"""kabanero-watcher settings (docs/architecture.md §2: ``CLUSTER_NAME``, ``WATCH_NAMESPACES``)."""

from __future__ import annotations

import os
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import CommonSettings, split_comma_list


def _default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(CommonSettings):
    """Environment of the watcher; durations in seconds."""

    # Each service its own default port, so all four run side by side on one host (the images set 8080).
    http_port: int = Field(default=8081, ge=0, le=65535)
    cluster_name: str = Field(
        default="default", description="this cluster's name in service parameters and event keys"
    )
    create_namespaces: bool = Field(
        default=False,
        description="Kabanero services with `parameters.create`: create a missing namespace before the "
        "Kabanero CR (needs the namespaces rule of `k8s/overlays/create-instances`)",
    )
    watch_namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="comma-separated namespaces; empty = all (one cluster-wide watch per resource type)",
    )
    watch_families: Annotated[tuple[Literal["kabanero", "tekton"], ...], NoDecode] = Field(
        default=("kabanero", "tekton"),
        description="what the watcher mirrors: `kabanero` (Kabanero CRs, Stacks, events CRDs, gitops-map), "
        "`tekton` (Tekton Pipelines, EventListeners, their Routes/Ingresses and the installation); a "
        "Tekton-only install sets `tekton` and needs no Kabanero RBAC",
    )
    tekton_install_namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("tekton-pipelines", "openshift-pipelines"),
        description="where a Tekton installation's controllers, `pipelines-info`/`triggers-info` ConfigMaps "
        "and dashboard are looked for (tkn's and the Tekton Dashboard's search list), whatever "
        "`WATCH_NAMESPACES` says",
    )
    tekton_dashboard_url: str | None = Field(
        default=None,
        description="the Tekton Dashboard's base URL when no Route `tekton-dashboard` or Ingress to Service "
        "`tekton-dashboard` shows it (e.g. behind a proxy)",
    )
    kube_api_url: str | None = Field(
        default=None, description="plain-HTTP API server URL (the emulator); wins over the next three"
    )
    kubeconfig: str | None = Field(
        default=None,
        json_schema_extra={"doc_default": "`~/.kube/config`"},
        description="kubeconfig file, used when neither `KUBE_API_URL` nor `KUBERNETES_SERVICE_HOST` is set",
    )
    kube_context: str | None = Field(
        default=None,
        json_schema_extra={"doc_default": "current"},
        description="context of the kubeconfig file",
    )
    kubernetes_service_host: str | None = Field(
        default=None,
        json_schema_extra={"doc_default": "set by Kubernetes"},
        description="set by Kubernetes in every pod: selects in-cluster config (the ServiceAccount token)",
    )
    inactivity_timeout_s: float = Field(
        default=70.0,
        gt=0,
        description="no event or bookmark for this long = dead stream, reconnect (as kopf)",
    )
    watch_timeout_s: int = Field(
        default=300,
        ge=1,
        description="server-side watch timeout; the stream then ends normally and resumes from the last "
        "resourceVersion",
    )
    kube_request_timeout_s: float = Field(
        default=10.0, gt=0, description="bound on one list or Lease request and on opening a watch stream"
    )
    reconnect_backoff_s: float = Field(default=1.0, gt=0, description="first reconnect backoff")
    reconnect_backoff_max_s: float = Field(default=30.0, gt=0, description="longest reconnect backoff")
    optional_reprobe_s: float = Field(
        default=60.0,
        gt=0,
        description="re-probe interval of optional kinds (events CRDs, Tekton CRDs, Routes) while absent or "
        "forbidden (Kabanero 0.6-0.8 has no events CRDs)",
    )
    legacy_triggers: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="`spec.triggers[]` are triggers: `auto` (only while the events CRDs are absent), "
        "`always`, `never`",
    )
    legacy_trigger_fields: Literal["url", "any"] = Field(
        default="url",
        description="which `spec.triggers[]` entry is a namespace's legacy trigger: `url` = the first with a "
        "flat `url`, as kabanero-events reads it (`GetTriggerInfo`); `any` (extension, off by default) = the "
        "first with a flat `url`, `https.url` or usable `gitRelease`, for clusters whose triggers use the "
        "0.6+ schema fields",
    )
    snapshot_interval_s: float = Field(
        default=600.0, gt=0, description="period of the full per-instance snapshot (also sent at start)"
    )
    snapshot_part_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=16 * 1024,
        le=8 * 1024 * 1024,
        description="a `kabanero.snapshot` or `tekton.snapshot` whose body would pass this many bytes is "
        "published as several parts of one revision, each within it (RabbitMQ refuses messages over 16 MiB; "
        "a consumer stores each part as its own document, within MongoDB's 16 MiB)",
    )
    publish_retry_s: float = Field(default=2.0, gt=0, description="retry interval of a failed publish")
    publish_concurrency: int = Field(
        default=16,
        ge=1,
        description="namespaces reconciled (and published, or snapshotted) at once; within one namespace "
        "events stay sequential, and one key is never published concurrently",
    )
    publish_batch: int = Field(
        default=1000,
        ge=1,
        description="events of one namespace published and recorded per batch (a namespace of 20,000 "
        "triggers progresses batch by batch instead of holding them all in one)",
    )
    liveness_bound_s: float = Field(
        default=180.0,
        gt=0,
        description="`/healthz` fails when the leading watcher saw no activity (event, bookmark, list, "
        "stream end) this long",
    )
    lease_name: str = Field(default="kabanero-watcher", description="name of the leader-election Lease")
    lease_namespace: str = Field(
        default="kabanero",
        description="namespace of the Lease; k8s sets it to the pod's (the Role is there)",
    )
    lease_duration_s: int = Field(
        default=15, ge=1, description="a standby takes over at most this long after the leader stops renewing"
    )
    lease_renew_s: float = Field(default=5.0, gt=0, description="the leader renews its Lease this often")
    holder_identity: str = Field(
        default_factory=_default_identity,
        json_schema_extra={"doc_default": "hostname-pid"},
        description="Lease holder; k8s sets the pod name",
    )

    @field_validator("watch_namespaces", "watch_families", "tekton_install_namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_comma_list(value)

    @field_validator("watch_families")
    @classmethod
    def _some_family(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one family (kabanero, tekton)")
        return tuple(dict.fromkeys(value))

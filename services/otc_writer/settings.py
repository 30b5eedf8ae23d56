"""otc-writer settings (docs/architecture.md §2: ``OTC_API_URL``, ``OTC_IAM_URL``, ``OTC_API_KEY``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from shared.settings import CommonSettings


class Settings(CommonSettings):
    # Each service its own default port, so all four run side by side on one host (the images set 8080).
    http_port: int = Field(default=8082, ge=0, le=65535)

    otc_api_url: str = Field(
        default="https://api.us-south.devops.cloud.ibm.com/toolchain/v2",
        description="Toolchain API v2 base (the toolchains' region)",
    )
    otc_iam_url: str = Field(default="https://iam.cloud.ibm.com", description="IAM base (`/identity/token`)")
    otc_api_key: SecretStr = Field(
        description="IBM Cloud API key (secret); use a service ID with Editor on the toolchains"
    )
    otc_rate_limit: float = Field(
        default=10.0, gt=0, description="Toolchain API requests per second, **per replica**"
    )
    otc_max_concurrency: int = Field(default=8, ge=1, description="concurrent OTC requests per replica")
    otc_timeout_s: float = Field(default=10.0, gt=0, description="timeout of one HTTP request")
    otc_deadline_s: float = Field(default=45.0, gt=0, description="one OTC operation with its retries")
    otc_max_attempts: int = Field(default=5, ge=1, description="attempts per operation")
    otc_backoff_base_s: float = Field(
        default=0.2, gt=0, description="first retry backoff (with jitter; `Retry-After` wins)"
    )
    otc_backoff_cap_s: float = Field(default=10.0, gt=0, description="longest retry backoff")
    otc_breaker_threshold: int = Field(
        default=5, ge=1, description="failures in a row that open the circuit breaker"
    )
    otc_breaker_reset_s: float = Field(
        default=10.0, gt=0, description="how long the breaker stays open before one probe call"
    )
    otc_max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=4096,
        description="largest OTC answer read; a larger 2xx is a retryable error, not read further",
    )
    otc_list_max_pages: int = Field(
        default=200,
        ge=1,
        description="pages of one tools listing (all its pages, within one `OTC_DEADLINE_S`); past it a "
        "retryable error",
    )
    otc_list_max_items: int = Field(
        default=10_000, ge=1, description="tools of one tools listing; past it a retryable error"
    )
    otc_retry_after_max_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="longest hold a 429's `Retry-After` can impose (at most 3600); a larger, `inf` or "
        "`1e308` one is clamped to it",
    )

    trigger_tool_type: str = Field(default="customtool", description="`tool_type_id` of trigger tools")
    trigger_lifecycle_phase: Literal["THINK", "CODE", "DELIVER", "RUN", "MANAGE", "LEARN", "CULTURE"] = Field(
        default="DELIVER", description="lifecycle phase of trigger tools"
    )
    trigger_dashboard_url: str = Field(
        default="https://kabanero.local/clusters/{cluster}/namespaces/{namespace}/triggers/{owner}/{name}",
        description="dashboard link of a trigger tool; fields: `cluster`, `namespace`, `generation`, "
        "`owner`, `name`",
    )

    tekton_tool_type: str = Field(default="customtool", description="`tool_type_id` of Tekton cards")
    tekton_lifecycle_phase: Literal["THINK", "CODE", "DELIVER", "RUN", "MANAGE", "LEARN", "CULTURE"] = Field(
        default="DELIVER", description="lifecycle phase of Tekton cards"
    )
    tekton_service_page_url: str = Field(
        default="https://kabanero.local/tekton/clusters/{cluster}",
        pattern=r"^https?://",
        description="dashboard link of a Tekton card with neither a Tekton Dashboard link nor an external "
        "URL: set it to a page about the cluster's Tekton installation; field: `cluster`",
    )

    prefetch: int = Field(
        default=256,
        ge=1,
        description="AMQP prefetch per queue: room in which a backlog of trigger events and snapshots "
        'coalesces to the latest per key (docs/design.md, "Faults")',
    )
    handler_concurrency: int = Field(default=16, ge=1, description="messages handled at once per queue")
    lease_ttl_s: float = Field(
        default=90.0,
        gt=0,
        description="per-tool lease between replicas (in MongoDB); renewed every third of it while held",
    )
    lease_wait_s: float = Field(
        default=20.0, ge=0, description="how long to wait for another replica's lease"
    )
    otc_audit_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="period of the audit that lists each toolchain's tools and repairs what was deleted, "
        "edited or duplicated by hand in OTC (0 = off); an audit without drift costs only the list GETs",
    )

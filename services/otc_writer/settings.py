"""otc-writer settings (docs/architecture.md §2: ``OTC_API_URL``, ``OTC_IAM_URL``, ``OTC_API_KEY``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from shared.settings import CommonSettings


class Settings(CommonSettings):
    # Each service its own default port, so all four run side by side on one host (the images set 8080).
    http_port: int = Field(default=8082, ge=0, le=65535)

    otc_api_url: str = "https://api.us-south.devops.cloud.ibm.com/toolchain/v2"
    otc_iam_url: str = "https://iam.cloud.ibm.com"
    otc_api_key: SecretStr
    otc_rate_limit: float = Field(default=10.0, gt=0, description="Toolchain API requests per second")
    otc_max_concurrency: int = Field(default=8, ge=1)
    otc_timeout_s: float = Field(default=10.0, gt=0, description="timeout of one HTTP request")
    otc_deadline_s: float = Field(default=45.0, gt=0, description="one OTC operation with its retries")
    otc_max_attempts: int = Field(default=5, ge=1)
    otc_backoff_base_s: float = Field(default=0.2, gt=0)
    otc_backoff_cap_s: float = Field(default=10.0, gt=0)
    otc_breaker_threshold: int = Field(default=5, ge=1)
    otc_breaker_reset_s: float = Field(default=10.0, gt=0)
    otc_max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=4096, description="largest OTC answer read; larger: retried"
    )
    otc_list_max_pages: int = Field(default=200, ge=1, description="pages of one tools listing")
    otc_list_max_items: int = Field(default=10_000, ge=1, description="tools of one tools listing")
    otc_retry_after_max_s: float = Field(
        default=300.0, gt=0, le=3600, description="longest hold a 429's Retry-After can impose"
    )

    trigger_tool_type: str = "customtool"
    trigger_lifecycle_phase: Literal["THINK", "CODE", "DELIVER", "RUN", "MANAGE", "LEARN", "CULTURE"] = (
        "DELIVER"
    )
    trigger_dashboard_url: str = Field(
        default="https://kabanero.local/clusters/{cluster}/namespaces/{namespace}/triggers/{owner}/{name}",
        description="dashboard link of a trigger tool; fields: cluster, namespace, generation, owner, name",
    )

    tekton_tool_type: str = "customtool"
    tekton_lifecycle_phase: Literal["THINK", "CODE", "DELIVER", "RUN", "MANAGE", "LEARN", "CULTURE"] = (
        "DELIVER"
    )
    tekton_service_page_url: str = Field(
        default="https://kabanero.local/tekton/clusters/{cluster}",
        pattern=r"^https?://",
        description="dashboard link of a Tekton card that has neither a Tekton Dashboard link nor an "
        "external URL (the Tekton installation's page); field: cluster",
    )

    prefetch: int = Field(
        default=256,
        ge=1,
        description="unacked messages per queue: room to coalesce a backlog (trigger events, snapshots)",
    )
    handler_concurrency: int = Field(default=16, ge=1, description="messages handled at once per queue")
    lease_ttl_s: float = Field(
        default=90.0, gt=0, description="per-tool lease; renewed every third of it while held"
    )
    lease_wait_s: float = Field(default=20.0, ge=0, description="wait for another replica's lease")
    otc_audit_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="period of the audit that repairs tools changed or deleted by hand in OTC (0 = off)",
    )

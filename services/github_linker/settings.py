"""github-linker settings (environment; contract names per docs/architecture.md §2)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class Settings(CommonSettings):
    """``GITHUB_GIT_ID``, ``GITHUB_HOSTS``, ``GHE_HOSTS``, ``GITHUB_REPO_KINDS`` plus the common ones."""

    # Each service its own default port, so all four run side by side on one host (the images set 8080).
    http_port: int = Field(default=8083, ge=0, le=65535)

    github_git_id: str = Field(default="github", description="OTC's `git_id` for public GitHub")
    github_hosts: tuple[str, ...] = Field(
        default=("github.com", "www.github.com"), description="JSON list of hosts served by public GitHub"
    )
    ghe_hosts: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: GitHub Enterprise host -> the `git_id` (Enterprise GUID) OTC knows it by",
    )
    # docs/architecture.md §1 names trigger and pipeline repos; stack hubs hold the stacks and, before
    # 0.9, their pipelines, so they are linked by default too.
    github_repo_kinds: tuple[str, ...] = Field(
        default=("stack-hub", "pipeline", "gitops", "trigger"),
        description="JSON list: a repository of an instance gets a GitHub tool when one of its kinds (it can "
        "have several) is listed; `gitops` is the GitOps pipelines and the gitops-map repository. Leave a "
        "kind out to stop linking it (`unknown` never links)",
    )
    prefetch: int = Field(default=16, ge=1, description="AMQP prefetch")

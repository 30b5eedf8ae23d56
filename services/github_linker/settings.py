"""github-linker settings (environment; contract names per ARCHITECTURE §2)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class Settings(CommonSettings):
    """``GITHUB_GIT_ID``, ``GITHUB_HOSTS``, ``GHE_HOSTS``, ``GITHUB_REPO_KINDS`` plus the common ones."""

    # OTC's git_id for public GitHub.
    github_git_id: str = "github"
    # Hosts served by public GitHub (JSON list in the environment).
    github_hosts: tuple[str, ...] = ("github.com", "www.github.com")
    # GitHub Enterprise: host -> the git_id (Enterprise GUID) OTC knows it by (JSON object).
    ghe_hosts: dict[str, str] = Field(default_factory=dict)
    # Which repositories of an instance get a tool (ARCHITECTURE §1: trigger and pipeline repos;
    # `spec.gitops.pipelines[]` are Tekton pipeline archives too, reported by the watcher as "gitops").
    github_repo_kinds: tuple[str, ...] = ("trigger", "pipeline", "gitops")
    prefetch: int = Field(default=16, ge=1)

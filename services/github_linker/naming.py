"""Deterministic identities of GitHub tools: command key, OTC tool name, git_id, content.

Pure functions: the same repository in the same toolchain always yields the same key and name, so a
replayed or duplicated command is recognised by otc-writer's ledger, and an ambiguous create can be
resolved by looking the name up in the toolchain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from shared.otc_tools import TOOL_NAME_MAX, TOOL_NAME_RE, fit_tool_name, sanitize_tool_name, tool_name_fits

PURPOSE = "github"
TOOL_TYPE_ID = "githubconsolidated"
NAME_MAX = TOOL_NAME_MAX
NAME_PATTERN = TOOL_NAME_RE


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _digest(url: str) -> str:
    return hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()


def tool_key(toolchain_id: str, url: str) -> str:
    """Command/ledger key of the tool for ``url`` in ``toolchain_id`` (one per toolchain and repo)."""
    return f"{PURPOSE}:{toolchain_id}:{_digest(url)[:16]}"


def tool_name(url: str, *, github_hosts: Collection[str]) -> str:
    """``github <owner>-<repo>`` (host first for non-github.com), valid for OTC.

    When the readable form had to be altered (characters replaced, truncated, host-qualified or not
    an owner/repo path) a short hash of the URL is appended so distinct repositories never share a name.
    So it is when the owner contains ``-``: ``a-b/c`` and ``a/b-c`` would both read ``a-b-c``, and a
    shared name would let an ambiguous create adopt the other repository's tool. (GitHub owners are
    ``[A-Za-z0-9-]``, so without a hyphen in the owner the first ``-`` splits the name uniquely.)
    """
    host = host_of(url)
    segments = [s for s in urlsplit(url).path.split("/") if s]
    readable = "-".join(segments)
    if host not in github_hosts:
        readable = f"{host} {readable}".strip()
    raw = f"github {readable}".strip()
    name = sanitize_tool_name(raw)
    lossy = (
        name != raw
        or not tool_name_fits(name)
        or len(segments) != 2
        or host not in github_hosts
        or "-" in segments[0]
    )
    if lossy:
        name = fit_tool_name(name, _digest(url)[:8])
    return name


def git_id(
    url: str, *, github_git_id: str, github_hosts: Collection[str], ghe_hosts: Mapping[str, str]
) -> str | None:
    """OTC ``git_id`` for the repository's host; None when the host is not a known GitHub."""
    host = host_of(url)
    if host in ghe_hosts:
        return ghe_hosts[host]
    if host in github_hosts:
        return github_git_id
    return None


def link_parameters(url: str, git: str) -> dict[str, Any]:
    return {"type": "link", "repo_url": url, "git_id": git, "has_issues": False}

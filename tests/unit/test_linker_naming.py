"""github-linker's deterministic identities: command keys, OTC tool names, git_id per host."""

from __future__ import annotations

import pytest

from services.github_linker import naming
from shared.events import normalize_repository_url
from shared.otc_tools import tool_content_hash

GITHUB = ("github.com", "www.github.com")


def test_key_is_per_toolchain_and_repository_and_stable() -> None:
    key = naming.tool_key("tc-1", "https://github.com/org/repo")
    assert key == naming.tool_key("tc-1", "https://github.com/org/repo")
    assert key.startswith("github:tc-1:") and len(key.rsplit(":", 1)[1]) == 16
    assert key != naming.tool_key("tc-2", "https://github.com/org/repo")
    assert key != naming.tool_key("tc-1", "https://github.com/org/repo2")


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo.git",
        "https://GitHub.com/org/repo/",
        "https://github.com/org/repo",
        " HTTPS://github.com/org/repo.git/?token=x#readme ",
    ],
)
def test_normalized_spellings_are_one_repository(url: str) -> None:
    assert normalize_repository_url(url) == "https://github.com/org/repo"


def test_github_name_is_readable() -> None:
    assert naming.tool_name("https://github.com/kabanero/collections", github_hosts=GITHUB) == (
        "github kabanero-collections"
    )
    assert naming.tool_name("https://github.com/kabanero-io/collections", github_hosts=GITHUB).startswith(
        "github kabanero-io-collections "
    )


def test_hyphens_cannot_make_two_repositories_share_a_name() -> None:
    """``a-b/c`` and ``a/b-c`` join to the same readable text; the names must still differ."""
    urls = ("https://github.com/a-b/c", "https://github.com/a/b-c", "https://github.com/a-b-c/x")
    names = [naming.tool_name(u, github_hosts=GITHUB) for u in urls]
    assert len(set(names)) == len(urls), names
    assert all(naming.NAME_PATTERN.match(n) for n in names)


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/" + "r" * 300,
        "https://github.com/org/repo/extra/path",
        "https://github.com/org/re~po",
        "https://ghe.example.com/org/repo",
        "https://github.com/",
    ],
)
def test_every_name_is_valid_for_otc(url: str) -> None:
    name = naming.tool_name(url, github_hosts=GITHUB)
    assert len(name) <= naming.NAME_MAX
    assert naming.NAME_PATTERN.match(name), name
    assert name == naming.tool_name(url, github_hosts=GITHUB)


def test_altered_names_stay_distinct() -> None:
    long_a = "https://github.com/org/" + "r" * 300 + "a"
    long_b = "https://github.com/org/" + "r" * 300 + "b"
    names = {
        naming.tool_name(u, github_hosts=GITHUB)
        for u in (long_a, long_b, "https://ghe.example.com/org/repo", "https://github.com/org/repo")
    }
    assert len(names) == 4
    assert "ghe.example.com" in naming.tool_name("https://ghe.example.com/org/repo", github_hosts=GITHUB)


def test_non_ascii_is_kept() -> None:
    name = naming.tool_name("https://github.com/org/dépôt", github_hosts=GITHUB)
    assert name == "github org-dépôt"


def test_git_id_per_host() -> None:
    def git_id(url: str) -> str | None:
        return naming.git_id(
            url, github_git_id="github", github_hosts=GITHUB, ghe_hosts={"ghe.example.com": "ghe-guid"}
        )

    assert git_id("https://github.com/o/r") == "github"
    assert git_id("https://ghe.example.com/o/r") == "ghe-guid"
    assert git_id("https://gitlab.com/o/r") is None


def test_content_hash_tracks_parameters() -> None:
    a = tool_content_hash(
        "githubconsolidated", "n", naming.link_parameters("https://github.com/o/r", "github")
    )
    b = tool_content_hash("githubconsolidated", "n", naming.link_parameters("https://github.com/o/r", "ghe"))
    assert a != b
    assert a == tool_content_hash(
        "githubconsolidated", "n", naming.link_parameters("https://github.com/o/r", "github")
    )

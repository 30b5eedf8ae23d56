"""Every architecture citation in code and docs points at docs/architecture.md, at a section it has."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT

CITATION = re.compile(r"docs/architecture\.md §(\d+)")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if p.endswith((".py", ".md", ".yaml", ".yml", ".toml", "Dockerfile"))]


def test_architecture_citations_point_into_the_repository() -> None:
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "architecture.md").read_text(), re.M))
    assert sections == {str(n) for n in range(1, 10)}
    stale, cited = [], set()
    for path in _tracked():
        text = (ROOT / path).read_text(errors="replace")
        if path != "tests/unit/test_docs_citations.py" and "ARCHITECTURE §" in text:
            stale.append(path)
        cited |= {(path, n) for n in CITATION.findall(text)}
    assert stale == [], "cite docs/architecture.md §N instead"
    assert cited and {(p, n) for p, n in cited if n not in sections} == set()

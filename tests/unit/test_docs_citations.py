"""Every citation in code and docs points into the repository, at a section the cited document has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT

# "docs/x.md §3", "docs/reference/x.md §2-§7", "§6, §7", "§6/§7", "§1.5"; JSON escapes § as \u00a7.
CITATION = re.compile(r"(docs/(?:reference/)?[\w-]+\.md)((?:(?:, | ?[-/] ?| )§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
# Documents kept outside the repository (the team's shared notes), which no reader of the repository has.
OUTSIDE = re.compile(
    r"(?<![\w/.-])(?:shared/reference/|shared/design/|/work/shared|ARCHITECTURE(?:\.md| §)|"
    r"(?:kabanero|otc-api|tekton|reliability-security-performance|style-anchors)(?:\.md|(?= §)))"
)
THIS = "tests/unit/test_docs_citations.py"


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    suffixes = (".py", ".md", ".yaml", ".yml", ".toml", ".json", "Dockerfile", ".cfg", ".ini", ".sh")
    return [p for p in out.splitlines() if p.endswith(suffixes) and (ROOT / p).is_file()]


def _texts() -> dict[str, str]:
    return {
        p: (ROOT / p).read_text(errors="replace").replace("\\u00a7", "§") for p in _tracked() if p != THIS
    }


def sections(doc: Path) -> set[str]:
    """The numbered headings of a document: "## 3. Messages" gives 3, "### 1.5 The Tekton install" 1.5."""
    return set(re.findall(r"^#+ (\d+(?:\.\d+)*)\.? ", doc.read_text(), re.M))


def test_architecture_has_its_nine_sections() -> None:
    assert sections(ROOT / "docs" / "architecture.md") == {str(n) for n in range(1, 10)}


def test_no_citation_of_a_document_outside_the_repository() -> None:
    outside = {
        (path, line.strip()[:100])
        for path, text in _texts().items()
        for line in text.splitlines()
        if OUTSIDE.search(line)
    }
    assert outside == set(), "cite docs/reference/X.md §N or docs/architecture.md §N (in the repository)"


def test_section_citations_point_at_sections_that_exist() -> None:
    cited: set[tuple[str, str, str]] = set()
    for path, text in _texts().items():
        for doc, tail in CITATION.findall(text):
            cited |= {(path, doc, n) for n in SECTION.findall(tail)}
    docs = {doc for _, doc, _ in cited}
    assert {"docs/architecture.md", "docs/reference/kabanero.md", "docs/reference/otc-api.md"} <= docs
    missing = {doc for doc in docs if not (ROOT / doc).is_file()}
    assert missing == set(), f"cited documents that do not exist: {missing}"
    known = {doc: sections(ROOT / doc) for doc in docs}
    assert {(p, d, n) for p, d, n in cited if n not in known[d]} == set()


def test_the_outside_pattern_catches_what_it_must() -> None:
    """The guard itself: bare names of the shared notes are caught, citations into docs/ are not."""
    caught = [
        "(kabanero.md §9)",
        "otc-api.md §4.7",
        "otc-api §2.7",
        "ARCHITECTURE §10",
        "`shared/reference/otc-api.md`",
    ]
    fine = ["docs/reference/kabanero.md §6", "docs/reference/tekton.md", "docs/architecture.md §3"]
    assert all(OUTSIDE.search(s) for s in caught)
    assert not any(OUTSIDE.search(s) for s in fine)
    assert SECTION.findall(CITATION.findall("(docs/reference/kabanero.md §2-§7)")[0][1]) == ["2", "7"]


# 'docs/design.md, "Faults"', 'docs/design.md "Messaging"', 'docs/design.md, *Tekton cards*'.
NAMED = re.compile(r"(docs/(?:reference/)?[\w-]+\.md),? (?:\"([^\"\n]{3,80})\"|\*([^*\n]{3,80})\*)")


def titles(doc: Path) -> list[str]:
    """What a named citation may point at: headings, and the bold leads of paragraphs and items."""
    text = doc.read_text()
    heads = re.findall(r"^#+ (.+)$", text, re.M)
    leads = re.findall(r"\*\*([^*\n]+)\*\*", text)
    return [t.lower() for t in heads + leads]


def test_named_citations_point_at_a_heading_or_lead_that_exists() -> None:
    cited = {
        (path, doc, (quoted or starred).strip().rstrip(".:"))
        for path, text in _texts().items()
        for doc, quoted, starred in NAMED.findall(text)
    }
    assert {d for _, d, _ in cited} >= {"docs/design.md", "docs/operations.md"}
    known = {doc: titles(ROOT / doc) for doc in {d for _, d, _ in cited} if (ROOT / doc).is_file()}
    dangling = {
        (path, doc, name)
        for path, doc, name in cited
        if not any(name.lower() in title for title in known.get(doc, []))
    }
    assert dangling == set(), "name a heading (or a bold lead) the cited document has"


def test_the_life_of_a_change_names_code_that_exists() -> None:
    """docs/life-of-a-change.md walks the code by file and function: each must still be there."""
    text = (ROOT / "docs" / "life-of-a-change.md").read_text()
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    paths = {s for s in spans if re.fullmatch(r"(?:services|shared)/[\w/]+\.py", s)}
    assert paths and {p for p in paths if not (ROOT / p).is_file()} == set()
    code = "\n".join(
        (ROOT / p).read_text()
        for p in _tracked()
        if p.startswith(("services/", "shared/")) and p.endswith(".py")
    )
    # Functions, classes and attributes, and the collections, parameters and modules named with them.
    defined = set(re.findall(r"\w+", code)) | {Path(p).stem for p in _tracked() if p.endswith(".py")}
    named = {
        part
        for span in spans
        if re.fullmatch(r"[A-Za-z_][\w.]*(?:\(\))?", span)
        for part in span.rstrip("()").split(".")
        if len(part) > 3 and not part.isupper() and ("_" in part.strip("_") or part[0].isupper())
    }
    assert len(named) > 30 and named - defined == set()
    settings = {s for s in spans if re.fullmatch(r"[A-Z][A-Z0-9_]+_[A-Z0-9_]+", s)}
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    assert {s for s in settings if f"| `{s}` |" not in deployment} == set()

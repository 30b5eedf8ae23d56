"""The radon gate of ``make lint`` (scripts/complexity.py) fails on a function above 12, closures too."""

from __future__ import annotations

from pathlib import Path

from scripts.complexity import main, too_complex

# 13 by radon (1 + 6 ifs + 6 boolean operators); ruff's C901 would count 7.
BRANCHY = (
    "def f(a, b):\n"
    + "".join(f"    if a == {i} and b:\n        return {i}\n" for i in range(6))
    + ("    return -1\n")
)


def test_a_function_above_12_fails_the_gate(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(BRANCHY)
    assert too_complex([tmp_path], 12) == [f"{(tmp_path / 'm.py').as_posix()}:1: f has complexity 13 (> 12)"]
    assert main([str(tmp_path)]) == 1


def test_a_closure_counts_and_12_passes(tmp_path: Path) -> None:
    nested = "def outer():\n" + "".join("    " + line + "\n" for line in BRANCHY.splitlines())
    (tmp_path / "m.py").write_text(nested)
    assert [line.split(": ")[1] for line in too_complex([tmp_path], 12)] == [
        "outer.f has complexity 13 (> 12)"
    ]
    (tmp_path / "m.py").write_text(BRANCHY.replace("if a == 5 and b:", "if a == 5:"))
    assert main([str(tmp_path)]) == 0


def test_the_product_passes() -> None:
    assert main(["services", "shared", "kotc_cli"]) == 0

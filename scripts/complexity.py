"""``make lint``: no function in services/, shared/ or kotc_cli/ above cyclomatic complexity 12, by radon.

ruff's C901 applies the same bound but does not count boolean operators (``and``/``or``), so a
condition packed with them passes ruff and not radon: radon's figure is the one the design holds to
(docs/design.md). Methods, closures and nested functions are all counted; a class's own figure is
derived from its methods and is not. Exit status 1 with one line per function above the bound.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from radon.complexity import add_inner_blocks, cc_visit
from radon.visitors import Function

MAX_COMPLEXITY = 12

EXEMPT: dict[str, str] = {}
"""``path:qualified name`` -> why it may stay above the bound for now (empty: none may)."""


def functions(path: Path) -> Iterator[tuple[str, int, int]]:
    """(qualified name, line, complexity) of every function, method and closure of one file."""
    for block in add_inner_blocks(cc_visit(path.read_text(encoding="utf-8"))):
        if isinstance(block, Function):
            yield block.fullname, block.lineno, block.complexity


def too_complex(roots: list[Path], limit: int) -> list[str]:
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for name, line, complexity in functions(path):
                if complexity > limit and f"{path.as_posix()}:{name}" not in EXEMPT:
                    found.append(f"{path.as_posix()}:{line}: {name} has complexity {complexity} (> {limit})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "roots", nargs="*", type=Path, default=[Path("services"), Path("shared"), Path("kotc_cli")]
    )
    parser.add_argument("--max", type=int, default=MAX_COMPLEXITY)
    args = parser.parse_args(argv)
    found = too_complex(args.roots, args.max)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} function(s) above radon complexity {args.max}: split them along their concerns")
        return 1
    print(f"radon: no function above complexity {args.max} in {', '.join(map(str, args.roots))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python3 -m scripts.wheelhouse [--dest wheels] [--arch x86_64|aarch64]``: the image build's wheels.

Downloads every wheel pinned in requirements.lock, for Linux on ARCH and CPython 3.13, into DEST
with ``pip download --require-hashes``: each file is checked against the lock's hashes before the
Dockerfile installs it with ``--no-index``. So the image build needs no network, which is also what
a build behind a proxy or for an air-gapped registry wants. Wheels the lock no longer names are
removed from DEST (the Dockerfile runs the one pip wheel there). Standard library only: any Python
3 with pip runs it, the host's or ``docker run -v "$PWD:/src" -w /src python:3.13-slim``.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = {
    "x86_64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"],
    "aarch64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64", "linux_aarch64"],
}
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def download_args(arch: str) -> list[str]:
    """pip's options selecting the Linux wheels of ARCH for CPython 3.13."""
    tags = PLATFORMS[arch]
    platforms = [a for tag in tags for a in ("--platform", tag)]
    return [
        "--no-deps",
        "--only-binary=:all:",
        *platforms,
        "--python-version",
        "3.13",
        "--implementation",
        "cp",
    ]


def prune(dest: Path, lock_text: str) -> list[str]:
    """Remove wheels of DEST that the lock does not pin; returns their names."""
    pinned = {(_normal(n), v) for n, v in PIN.findall(lock_text)}
    removed = []
    for wheel in dest.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if (_normal(name), version) not in pinned:
            wheel.unlink()
            removed.append(wheel.name)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m scripts.wheelhouse", description=__doc__)
    parser.add_argument("--dest", type=Path, default=ROOT / "wheels")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument(
        "--arch", default=platform.machine(), help="x86_64 or aarch64 (default: this machine's)"
    )
    args = parser.parse_args(argv)
    arch = ARCH_ALIASES.get(args.arch, args.arch)
    if arch not in PLATFORMS:
        parser.error(f"--arch must be one of {sorted(PLATFORMS)}, not {args.arch!r}")
    args.dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--require-hashes",
    ]
    args_ = [*cmd, *download_args(arch), "-r", str(args.lock), "-d", str(args.dest)]
    done = subprocess.run(args_, check=False)  # noqa: S603 - this interpreter's pip, fixed arguments
    if done.returncode != 0:
        print(f"wheelhouse: pip download failed (exit {done.returncode})", file=sys.stderr)
        return 1
    removed = prune(args.dest, args.lock.read_text())
    count = len(list(args.dest.glob("*.whl")))
    print(
        f"wheelhouse: {count} wheels for linux/{arch} in {args.dest}"
        + (f", removed {removed}" if removed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

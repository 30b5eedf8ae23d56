"""scripts.wheelhouse: the image build's wheels for one Linux architecture, nothing the lock left."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import wheelhouse

LOCK = """\
# comment
aio-pika==10.2.1 \\
    --hash=sha256:aa
PyYAML==6.0.4 \\
    --hash=sha256:bb
pip==24.2 \\
    --hash=sha256:cc
"""


def test_prune_keeps_exactly_the_pinned_versions(tmp_path: Path) -> None:
    keep = [
        "aio_pika-10.2.1-py3-none-any.whl",
        "pyyaml-6.0.4-cp313-cp313-manylinux_2_17_x86_64.whl",
        "pip-24.2-py3-none-any.whl",
    ]
    drop = ["pip-24.1-py3-none-any.whl", "requests-2.0-py3-none-any.whl"]
    for name in keep + drop:
        (tmp_path / name).write_bytes(b"")
    assert sorted(wheelhouse.prune(tmp_path, LOCK)) == sorted(drop)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)  # one pip wheel: the Dockerfile runs it


def test_download_args_select_linux_cpython_313_wheels_only() -> None:
    args = wheelhouse.download_args("aarch64")
    assert "--only-binary=:all:" in args and "--no-deps" in args
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms and all(p.endswith("_aarch64") for p in platforms)
    assert args[args.index("--python-version") + 1] == "3.13"


def test_unknown_architecture_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        wheelhouse.main(["--arch", "sparc", "--dest", "/nonexistent"])
    assert "--arch must be one of ['aarch64', 'x86_64'], not 'sparc'" in capsys.readouterr().err

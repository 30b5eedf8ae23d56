"""``python -m scripts.image_facts IMAGE VERSION REVISION``: what the runtime image promises, checked.

Run by the compose check on the image it built: a numeric non-root user; the liveness HEALTHCHECK
kept (podman's default OCI format would drop it) as an argv list through ``shared.probe``; the OCI
labels with the version and revision; and, in a container with a read-only root filesystem, every
service and the ``kabanero-otc`` CLI importable, no pip and no compiler or build tool on the PATH or
in the virtualenv.
"""

from __future__ import annotations

import json
import subprocess
import sys

SERVICES = ("broker_api", "kabanero_watcher", "otc_writer", "github_linker")
BUILD_TOOLS = ("pip", "pip3", "gcc", "cc", "c++", "make", "ld", "as")
INSIDE = f"""
import importlib, json, pathlib, shutil, sys
for name in {SERVICES!r}:
    importlib.import_module(f"services.{{name}}.app")
importlib.import_module("kotc_cli.main")  # the operators' CLI, `kabanero-otc`
if not (pathlib.Path(sys.prefix) / "bin" / "kabanero-otc").exists():
    raise SystemExit("no kabanero-otc command in the image")
bin_dir = pathlib.Path(sys.prefix) / "bin"
found = [t for t in {BUILD_TOOLS!r} if shutil.which(t) or (bin_dir / t).exists()]
try:
    import pip  # noqa: F401
    found.append("pip (module)")
except ImportError:
    pass
print(json.dumps(found))
"""


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)  # noqa: S603, S607 - podman with fixed arguments
    if done.returncode != 0:
        raise SystemExit(f"image facts: podman {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def problems(image: str, version: str, revision: str) -> list[str]:
    (info,) = json.loads(podman("image", "inspect", image))
    config = info.get("Config") or {}
    found = []
    user = str(config.get("User", ""))
    uid = user.split(":")[0]
    if not uid.isdigit() or int(uid) == 0:
        found.append(f"user {user!r}: expected a numeric non-root UID")
    health = (info.get("Healthcheck") or info.get("HealthCheck") or {}).get("Test") or []
    if health[:4] != ["CMD", "python", "-m", "shared.probe"]:
        found.append(f"HEALTHCHECK {health!r}: expected CMD python -m shared.probe ...")
    labels = info.get("Labels") or config.get("Labels") or {}
    for key, want in (("version", version), ("revision", revision)):
        if labels.get(f"org.opencontainers.image.{key}") != want:
            found.append(
                f"label org.opencontainers.image.{key} = {labels.get(f'org.opencontainers.image.{key}')!r}, expected {want!r}"
            )
    if not labels.get("org.opencontainers.image.source"):
        found.append("label org.opencontainers.image.source missing")
    run = ["run", "--rm", "--read-only", "--cap-drop", "ALL", "--entrypoint", "python", image, "-c", INSIDE]
    tools = json.loads(podman(*run).strip().splitlines()[-1])
    if tools:
        found.append(f"build tools in the runtime image: {tools}")
    return found


def main() -> int:
    image, version, revision = sys.argv[1:4]
    found = problems(image, version, revision)
    for problem in found:
        print(f"image facts: {image}: {problem}", file=sys.stderr)
    if not found:
        print(
            f"image facts: {image}: non-root, HEALTHCHECK kept, OCI labels, read-only run, no pip or build tools"
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

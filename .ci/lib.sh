# Shell helpers the CI checks share (sourced; the caller sets PY and defines log).

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for URL SECONDS SHOW [TEXT]: poll until the URL answers 200 (with TEXT in the body, when
# given), else run the command SHOW (a log tail) and fail.
wait_for() {
    local url="$1" seconds="$2" show="$3" text="${4:-}"
    for _ in $(seq "$((seconds * 4))"); do
        if "$PY" -c "import sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=2); sys.exit(r.status != 200 or sys.argv[2].encode() not in r.read())" \
            "$url" "$text" 2>/dev/null; then
            return 0
        fi
        sleep 0.25
    done
    log "$url not ready after ${seconds}s; log follows"; eval "$show" >&2 || true; return 1
}

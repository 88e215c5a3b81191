#!/usr/bin/env bash
# Load benchmark of the coordinator's API on this machine (SQLite store, local workers that
# exit at once), driven by wrk from a second process on loopback. Prints start-up time to the
# first answer, then requests/s and latency percentiles for: /health (no store), a status read,
# a listing, and submits (validate, seal, SQLite insert, spawn a worker process).
#
#   ./scripts/bench-api.sh            # 10 s per case, 16 connections
#   DURATION=30s CONNS=64 ./scripts/bench-api.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        echo "wrk is missing: install it (Debian/Ubuntu: sudo apt-get install wrk)" >&2
        exit 1
    fi
fi

cargo build --release -q -p coordinator
bin="$CARGO_TARGET_DIR/release/seren-coordinator"
work=$(mktemp -d)
server=""
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

key="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
hash=$(echo "$key" | "$bin" hash-key)
port=$(free_port)
url="http://127.0.0.1:$port"

start_ns=$(date +%s%N)
(cd "$work" && SEREN_API_KEY_SHA256="$hash" SEREN_LISTEN="127.0.0.1:$port" \
    SEREN_WORKER_PROGRAM=/bin/true SEREN_MAX_CONCURRENT_JOBS=0 SEREN_REAP_INTERVAL_SECS=0 \
    RUST_LOG=warn exec "$bin") &
server=$!
until curl -sf "$url/health" >/dev/null 2>&1; do sleep 0.002; done
ready_ns=$(date +%s%N)
startup_ms=$(( (ready_ns - start_ns) / 1000000 ))

# The key reaches curl and wrk through private files, never their command lines.
(umask 077; printf 'x-api-key: %s\n' "$key" >"$work/auth.header")
printf 'wrk.headers["x-api-key"] = "%s"\n' "$key" >"$work/auth.lua"
body='{"command":"init","source_url":"postgresql://app:s3cr%3Bt@src.example.com:5432/shop","target_url":"postgresql://app:s3cr%3Bt@dst.example.com:5432/shop","options":{"jobs":8}}'
# Seed jobs so that reads and listings work on a populated store.
for _ in $(seq 1 500); do
    curl -sf -X POST "$url/jobs" -H @"$work/auth.header" -d "$body" >/dev/null
done
job=$(curl -sf -X POST "$url/jobs" -H @"$work/auth.header" -d "$body" | sed 's/.*"job_id":"\([^"]*\)".*/\1/')

cat > "$work/submit.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "$key"
LUA

run() {
    local name=$1; shift
    local out
    out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$@")
    local rps p50 p99 non2xx
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    printf '%-34s %10s %10s %10s %8s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}"
}

jobs_total=501
echo "== coordinator API on $(nproc) cores, wrk -t2 -c$CONNS -d$DURATION on loopback (same machine)"
echo "start-up to first answer: ${startup_ms} ms   (store: SQLite, $jobs_total jobs seeded)"
printf '%-34s %10s %10s %10s %8s\n' case "req/s" p50 p99 non-2xx
run "GET /health (no store)" "$url/health"
run "GET /jobs/{id} (status read)" -s "$work/auth.lua" "$url/jobs/$job"
run "GET /jobs?limit=20 (listing)" -s "$work/auth.lua" "$url/jobs?limit=20"
run "POST /jobs (submit + worker spawn)" -s "$work/submit.lua" "$url/jobs"

#!/usr/bin/env bash
# Fuzz the HTTP API against its own document (docs/openapi.json) with schemathesis, bounded in
# time: every operation gets examples, boundary cases, random and stateful sequences, and the
# run fails on any response >= 500, any status the document does not list, and any body or
# content type that breaks the document. The API is a local seren-coordinator (SQLite store,
# key-file sealer) whose workers are /bin/true, so submits start nothing.
#
#   scripts/fuzz-api.sh [SECONDS]      (default 90; SEREN_FUZZ_SECS too)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
secs="${1:-${SEREN_FUZZ_SECS:-90}}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
venv=.venv-fuzz
version=4.32.5
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
    echo "== installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$version"
fi
build_debug_binaries
coordinator="$CARGO_TARGET_DIR/debug/seren-coordinator"

work="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# A throwaway key for this run only; it reaches schemathesis through the environment and its
# config file, never argv.
SEREN_FUZZ_KEY="fuzz-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export SEREN_FUZZ_KEY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
hash=$(printf '%s\n' "$SEREN_FUZZ_KEY" | "$coordinator" hash-key)
SEREN_API_KEY_SHA256="$hash" SEREN_LISTEN="127.0.0.1:$port" \
    SEREN_SQLITE_PATH="$work/jobs.db" SEREN_SEAL_KEY_FILE="$work/seal.key" \
    SEREN_WORKER_PROGRAM=/bin/true SEREN_WORKER_LOG_DIR="$work" SEREN_REAP_INTERVAL_SECS=0 \
    "$coordinator" >"$work/coordinator.log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.2
done
cat >"$work/schemathesis.toml" <<'EOF'
headers = { Authorization = "Bearer ${SEREN_FUZZ_KEY}" }
EOF
echo "== schemathesis $version against docs/openapi.json for ${secs} s"
status=0
"$venv/bin/st" --config-file "$work/schemathesis.toml" run docs/openapi.json \
    --url "http://127.0.0.1:$port" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-time "$secs" --workers 2 --no-color >"$work/fuzz.out" 2>&1 || status=$?
sed -n '/^=* SUMMARY/,$p' "$work/fuzz.out"
if [ "$status" -ne 0 ]; then
    sed -n '/^=* FAILURES/,/^=* SUMMARY/p;/^=* ERRORS/,/^=* SUMMARY/p' "$work/fuzz.out" | head -150
    echo "fuzz-api.sh: schemathesis found problems (exit $status)" >&2
    exit 1
fi
if grep -q "$SEREN_FUZZ_KEY" "$work/coordinator.log"; then
    echo "fuzz-api.sh: the API key appears in the coordinator's log" >&2
    exit 1
fi
echo "fuzz-api.sh: no response >= 500, no schema violation"

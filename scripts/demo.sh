#!/usr/bin/env bash
# The whole system on one machine: two throwaway PostgreSQL clusters, the pagila sample
# database in the source, `postgres-seren-replicator init` run here, then the same copy as a
# remote job through the control plane on this machine (`init --remote`: coordinator, SQLite
# job store, a seren-worker process), each followed by a check that every table of the target
# holds the source's rows. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_postgres
ensure_tools
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"

datasets=$(datasets_dir)

echo "== building"
cargo build -q -p postgres-seren-replicator -p coordinator -p worker
bin="$CARGO_TARGET_DIR/debug/postgres-seren-replicator"

work=$(mktemp -d /tmp/seren-demo.XXXXXX)
chmod 755 "$work"
src_port=$(free_port); dst_port=$(free_port)
STACK_PID=""
cleanup() {
    if [ -n "$STACK_PID" ]; then kill "$STACK_PID" 2>/dev/null || true; wait "$STACK_PID" 2>/dev/null || true; fi
    stop_cluster "$work/source"; stop_cluster "$work/target"; rm -rf "$work"
}
trap cleanup EXIT

echo "== starting source (port $src_port, wal_level=logical) and target (port $dst_port)"
start_cluster "$work/source" "$src_port" wal_level=logical
start_cluster "$work/target" "$dst_port"
psql_src() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$src_port" -U postgres "$@"; }
psql_src -d postgres -c "CREATE DATABASE pagila"
psql_src -d pagila -f "$datasets/pagila/pagila-schema.sql" -f "$datasets/pagila/pagila-data.sql" >/dev/null

echo "== postgres-seren-replicator init"
SEREN_SOURCE_URL="postgresql://postgres@127.0.0.1:$src_port/pagila?sslmode=disable" \
SEREN_TARGET_URL="postgresql://postgres@127.0.0.1:$dst_port/pagila_copy?sslmode=disable" \
    "$bin" init --progress log

echo "== checking every table"
if ! compare_databases "postgresql://postgres@127.0.0.1:$src_port/pagila" "postgresql://postgres@127.0.0.1:$dst_port/pagila_copy"; then
    echo "demo FAILED: the target differs from the source" >&2; exit 1
fi
echo "local copy OK: $COMPARED_TABLES tables identical in source and target"

echo "== the same copy as a remote job: the control plane on this machine (SQLite, local workers)"
start_local_stack "$work/stack"
SEREN_REMOTE_API="$STACK_URL" SEREN_API_KEY="$STACK_KEY" \
SEREN_SOURCE_URL="postgresql://postgres@127.0.0.1:$src_port/pagila?sslmode=disable" \
SEREN_TARGET_URL="postgresql://postgres@127.0.0.1:$dst_port/pagila_remote?sslmode=disable" \
    "$bin" init --remote --yes
if ! compare_databases "postgresql://postgres@127.0.0.1:$src_port/pagila" "postgresql://postgres@127.0.0.1:$dst_port/pagila_remote"; then
    echo "demo FAILED: the remote job's target differs from the source" >&2; exit 1
fi
echo "== verify on a worker: counts and checksums by key range, computed in both databases"
SEREN_REMOTE_API="$STACK_URL" SEREN_API_KEY="$STACK_KEY" \
SEREN_SOURCE_URL="postgresql://postgres@127.0.0.1:$src_port/pagila?sslmode=disable" \
SEREN_TARGET_URL="postgresql://postgres@127.0.0.1:$dst_port/pagila_remote?sslmode=disable" \
    "$bin" verify --remote
echo "demo OK: $COMPARED_TABLES tables identical after the local copy and after the remote job"

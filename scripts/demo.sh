#!/usr/bin/env bash
# The whole engine on one machine: two throwaway PostgreSQL clusters, the pagila sample
# database in the source, `postgres-seren-replicator init`, and a check that every table of
# the target holds the source's rows. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_postgres
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"

datasets=${SEREN_DATASETS:-../shared/datasets}
[ -f "$datasets/pagila/pagila-schema.sql" ] || { echo "pagila not found under $datasets: set SEREN_DATASETS" >&2; exit 1; }

echo "== building"
cargo build -q --release -p postgres-seren-replicator
bin="$CARGO_TARGET_DIR/release/postgres-seren-replicator"

work=$(mktemp -d /tmp/seren-demo.XXXXXX)
chmod 755 "$work"
src_port=$(free_port); dst_port=$(free_port)
cleanup() { stop_cluster "$work/source"; stop_cluster "$work/target"; rm -rf "$work"; }
trap cleanup EXIT

echo "== starting source (port $src_port, wal_level=logical) and target (port $dst_port)"
start_cluster "$work/source" "$src_port" wal_level=logical
start_cluster "$work/target" "$dst_port"
psql_src() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$src_port" -U postgres "$@"; }
psql_dst() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$dst_port" -U postgres "$@"; }
psql_src -d postgres -c "CREATE DATABASE pagila"
psql_src -d pagila -f "$datasets/pagila/pagila-schema.sql" -f "$datasets/pagila/pagila-data.sql" >/dev/null

echo "== postgres-seren-replicator init"
SEREN_SOURCE_URL="postgresql://postgres@127.0.0.1:$src_port/pagila?sslmode=disable" \
SEREN_TARGET_URL="postgresql://postgres@127.0.0.1:$dst_port/pagila_copy?sslmode=disable" \
    "$bin" init --progress log

echo "== checking every table"
count_sql="SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
mismatch=0; tables=0
while read -r t; do
    a=$(psql_src -d pagila -c "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '' ORDER BY x::text)), '') FROM ONLY $t x")
    b=$(psql_dst -d pagila_copy -c "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '' ORDER BY x::text)), '') FROM ONLY $t x")
    tables=$((tables + 1))
    if [ "$a" != "$b" ]; then echo "DIFFERENT: $t source=$a target=$b"; mismatch=1; fi
done < <(psql_src -d pagila -c "$count_sql")
if [ "$mismatch" -ne 0 ]; then echo "demo FAILED: the target differs from the source" >&2; exit 1; fi
echo "demo OK: $tables tables identical in source and target"

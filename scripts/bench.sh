#!/usr/bin/env bash
# Benchmark: our `init` against `pg_dump -Fc | pg_restore` and `pgcopydb clone`, in one
# invocation, alternating, each into a fresh target database on the same target server.
# Dataset: pgbench -i -s $SCALE plus a 1M-row table with jsonb, numeric, bytea, arrays and a
# GIN index. Prints wall time per run, medians, ratios, and our peak RSS.
#
#   ./scripts/bench.sh [ROUNDS]      (env: SCALE=30 WIDE_ROWS=1000000 JOBS=<cores>)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_postgres
if ! command -v pgcopydb >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; then
    [ "$(id -u)" -eq 0 ] || { echo "install pgcopydb and time (apt-get install pgcopydb time)" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgcopydb time >/dev/null
fi
rounds=${1:-3}
scale=${SCALE:-30}
wide_rows=${WIDE_ROWS:-1000000}
jobs=${JOBS:-$(nproc)}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
cargo build -q --release -p postgres-seren-replicator
ours="$CARGO_TARGET_DIR/release/postgres-seren-replicator"
bin=$(pg_bindir)

work=$(mktemp -d /tmp/seren-bench.XXXXXX)
chmod 755 "$work"
src_port=$(free_port); dst_port=$(free_port)
cleanup() { stop_cluster "$work/source"; stop_cluster "$work/target"; rm -rf "$work"; }
trap cleanup EXIT
server_settings=(shared_buffers=512MB max_wal_size=8GB checkpoint_timeout=30min max_connections=100)
start_cluster "$work/source" "$src_port" wal_level=logical "${server_settings[@]}"
start_cluster "$work/target" "$dst_port" "${server_settings[@]}"
src="postgresql://postgres@127.0.0.1:$src_port/bench?sslmode=disable"
dst_base="postgresql://postgres@127.0.0.1:$dst_port"
psql_dst() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 "$dst_base/postgres?sslmode=disable" "$@"; }

echo "== building the dataset (pgbench scale $scale, $wide_rows wide rows)"
psql -X -q "postgresql://postgres@127.0.0.1:$src_port/postgres" -c "CREATE DATABASE bench"
"$bin/pgbench" -q -i -s "$scale" "$src" >/dev/null 2>&1
psql -X -q -v ON_ERROR_STOP=1 "$src" <<SQL
CREATE TABLE wide (
  id bigint PRIMARY KEY, doc jsonb, amount numeric(18,4), payload bytea, tags text[], scores int[], created timestamptz);
INSERT INTO wide
SELECT g, jsonb_build_object('user', 'u' || (g % 5000), 'n', g, 'tags', jsonb_build_array('a', g % 7, 'b')),
       (g * 3.1415)::numeric(18,4), decode(md5(g::text) || md5((g+1)::text), 'hex'),
       ARRAY['t' || (g % 11), 't' || (g % 13)], ARRAY[g % 100, g % 1000, g], now() - (g || ' seconds')::interval
FROM generate_series(1, $wide_rows) g;
CREATE INDEX wide_doc_gin ON wide USING gin (doc);
VACUUM ANALYZE;
SQL
size=$(psql -X -At "$src" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
echo "source database: $size"

results="$work/results"
: > "$results"
run() { # tool round
    local tool=$1 round=$2 db="t_${1}_${2}" start end rss=""
    psql_dst -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    sync
    start=$(date +%s.%N)
    case $tool in
        ours)
            # --no-sync: a copy like the others' (the source has wal_level=logical, so init
            # would otherwise go on to set up replication).
            /usr/bin/time -f "%M" -o "$work/rss" "$ours" init --no-sync --source "$src" \
                --target "$dst_base/$db?sslmode=disable" --jobs "$jobs" --progress none 2>"$work/ours.log" \
                || { cat "$work/ours.log"; exit 1; }
            rss=$(( $(cat "$work/rss") / 1024 ))
            ;;
        pg_dump)
            "$bin/pg_dump" -Fc "$src" | "$bin/pg_restore" -d "$dst_base/$db?sslmode=disable"
            ;;
        pgcopydb)
            rm -rf "$work/pgcopydb"
            pgcopydb clone --source "$src" --target "$dst_base/$db?sslmode=disable" \
                --table-jobs "$jobs" --index-jobs "$jobs" --dir "$work/pgcopydb" >"$work/pgcopydb.log" 2>&1 \
                || { tail -20 "$work/pgcopydb.log"; exit 1; }
            ;;
    esac
    end=$(date +%s.%N)
    local secs; secs=$(echo "$end - $start" | bc)
    printf "%-9s round %d  %7.2f s %s\n" "$tool" "$round" "$secs" "${rss:+ (peak RSS ${rss} MB)}"
    echo "$tool $secs $rss" >> "$results"
    # Sanity: the copy holds every row.
    local n; n=$(psql -X -At "$dst_base/$db?sslmode=disable" -c "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM wide)")
    [ "$n" -eq $((scale * 100000 + wide_rows)) ] || { echo "$tool produced $n rows" >&2; exit 1; }
    psql_dst -c "DROP DATABASE $db"
}

echo "== $rounds rounds, alternating, --jobs/--table-jobs/--index-jobs $jobs"
for r in $(seq 1 "$rounds"); do
    for tool in ours pg_dump pgcopydb; do run "$tool" "$r"; done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m_ours=$(awk '$1=="ours"{print $2}' "$results" | median)
m_dump=$(awk '$1=="pg_dump"{print $2}' "$results" | median)
m_copy=$(awk '$1=="pgcopydb"{print $2}' "$results" | median)
rss=$(awk '$1=="ours"{print $3}' "$results" | sort -n | tail -1)
best=$(printf "%s\n%s\n" "$m_dump" "$m_copy" | sort -n | head -1)
echo
echo "== medians of $rounds (source $size, $(nproc) cores, source and target on this machine)"
printf "%-28s %8.2f s\n" "postgres-seren-replicator" "$m_ours"
printf "%-28s %8.2f s   ours/this = %.2f\n" "pg_dump -Fc | pg_restore" "$m_dump" "$(echo "$m_ours / $m_dump" | bc -l)"
printf "%-28s %8.2f s   ours/this = %.2f\n" "pgcopydb clone" "$m_copy" "$(echo "$m_ours / $m_copy" | bc -l)"
printf "ours / fastest other: %.2f; our peak RSS: %s MB\n" "$(echo "$m_ours / $best" | bc -l)" "$rss"

#!/usr/bin/env bash
# Benchmark at several sizes: our `init` against `pg_dump -Fc | pg_restore`, `pg_dump -Fd -j` +
# `pg_restore -j` and `pgcopydb clone`, in one invocation, alternating the tools, each run into a
# fresh target database, medians of ROUNDS. Then the physical floor of each set: every table read
# once on the source, loaded from files on the target, and its post-data (indexes, keys) alone.
#
#   ./scripts/bench.sh [ROUNDS]                      every set, 3 rounds (about 75 minutes)
#   SETS=small ./scripts/bench.sh 3                  only the 776 MB set (about 5 minutes)
#   ./scripts/bench.sh 0                             build the datasets only
#
# Sets (SETS, space-separated): small (pgbench -s 30 plus a 1M-row jsonb/GIN table, 776 MB),
# pgbench (pgbench -s 300: 4.5 GB, one table holds almost all of it), mixed (~10 GB: 300 small
# tables, four medium ones, one large table with jsonb under GIN and TOASTed text;
# scripts/bench/mixed.sql). Other settings: JOBS (default: cores), TOOLS (default: "ours pg_dump
# pg_dump_dir pgcopydb"), FLOOR=0 skips the floor, SEREN_BENCH_DIR (default
# /var/tmp/seren-bench) keeps the source cluster with its datasets between invocations, so only
# the first run builds them (the mixed set takes ~15 minutes). Disk: ~17 GB for the kept source,
# and during the mixed set up to ~30 GB more (a copy, its WAL, a directory dump).
#
# Both servers run on this machine, with fsync, full_page_writes and synchronous_commit on (as a
# user's server has them), shared_buffers=512MB, max_wal_size=8GB.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_postgres
if ! command -v pgcopydb >/dev/null 2>&1 || [ ! -x /usr/bin/time ] || ! command -v bc >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || { echo "install pgcopydb, time and bc (apt-get install pgcopydb time bc)" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgcopydb time bc >/dev/null
fi
rounds=${1:-3}
sets=${SETS:-small pgbench mixed}
tools=${TOOLS:-ours pg_dump pg_dump_dir pgcopydb}
jobs=${JOBS:-$(nproc)}
floor=${FLOOR:-1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
cargo build -q --release -p postgres-seren-replicator
ours="$CARGO_TARGET_DIR/release/postgres-seren-replicator"
bin=$(pg_bindir)

keep=${SEREN_BENCH_DIR:-/var/tmp/seren-bench}
mkdir -p "$keep"
work=$(mktemp -d /tmp/seren-bench.XXXXXX)
chmod 755 "$work"
src_port=$(free_port); dst_port=$(free_port)
settings=(shared_buffers=512MB max_wal_size=8GB checkpoint_timeout=30min max_connections=100
          fsync=on full_page_writes=on synchronous_commit=on)
# The kept source: created once, restarted on each invocation.
start_source() {
    local opts="-p $src_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$keep -c wal_level=logical"
    # The source takes no writes during the runs: a small max_wal_size keeps its pg_wal small.
    for s in "${settings[@]}" max_wal_size=1GB; do opts="$opts -c $s"; done
    if [ ! -f "$keep/source/PG_VERSION" ]; then
        [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$keep"
        as_server_user "$bin/initdb" -D "$keep/source" -U postgres -A trust -E UTF8 --locale=C >/dev/null
    fi
    as_server_user "$bin/pg_ctl" start -w -D "$keep/source" -l "$keep/server.log" -o "$opts" >/dev/null
    psql -X -q "postgresql://postgres@127.0.0.1:$src_port/postgres?sslmode=disable" -c CHECKPOINT
}
cleanup() {
    as_server_user "$bin/pg_ctl" stop -m fast -D "$keep/source" >/dev/null 2>&1 || true
    stop_cluster "$work/target"
    rm -rf "$work"
}
trap cleanup EXIT
start_source
start_cluster "$work/target" "$dst_port" "${settings[@]}"
src_base="postgresql://postgres@127.0.0.1:$src_port"
dst_base="postgresql://postgres@127.0.0.1:$dst_port"
psql_src() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 "$src_base/$db?sslmode=disable" "$@"; }
psql_dst() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 "$dst_base/$db?sslmode=disable" "$@"; }

# Build a set's database in the kept source unless it is there and complete (marked by its
# comment, written last).
readonly dataset_version=1
build_set() {
    local set=$1 mark="seren-bench $1 v$dataset_version"
    if [ "$(psql_src postgres -c "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '$set'")" = "$mark" ]; then
        return 0
    fi
    echo "== building the $set set (once; kept in $keep)"
    psql_src postgres -c "DROP DATABASE IF EXISTS $set" -c "CREATE DATABASE $set"
    case $set in
        small)
            "$bin/pgbench" -q -i -s 30 "$src_base/small?sslmode=disable" >/dev/null 2>&1
            psql_src small <<'SQL'
CREATE TABLE wide (
  id bigint PRIMARY KEY, doc jsonb, amount numeric(18,4), payload bytea, tags text[], scores int[], created timestamptz);
INSERT INTO wide
SELECT g, jsonb_build_object('user', 'u' || (g % 5000), 'n', g, 'tags', jsonb_build_array('a', g % 7, 'b')),
       (g * 3.1415)::numeric(18,4), decode(md5(g::text) || md5((g+1)::text), 'hex'),
       ARRAY['t' || (g % 11), 't' || (g % 13)], ARRAY[g % 100, g % 1000, g], now() - (g || ' seconds')::interval
FROM generate_series(1, 1000000) g;
CREATE INDEX wide_doc_gin ON wide USING gin (doc);
VACUUM ANALYZE;
SQL
            ;;
        pgbench)
            "$bin/pgbench" -q -i -s 300 "$src_base/pgbench?sslmode=disable" >/dev/null 2>&1
            psql_src pgbench -c "VACUUM ANALYZE"
            ;;
        mixed)
            psql_src mixed -f scripts/bench/mixed.sql >/dev/null
            ;;
    esac
    psql_src postgres -c "COMMENT ON DATABASE $set IS '$mark'"
}

# The sanity check after each run: the exact row counts of the set's two largest tables.
check_query() {
    psql_src "$1" -c "SELECT string_agg(format('(SELECT count(*) FROM %I.%I)', n.nspname, c.relname), ' + ')
                      FROM (SELECT * FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
                            ORDER BY relpages DESC LIMIT 2) c JOIN pg_namespace n ON n.oid = c.relnamespace"
}

results="$work/results"
: > "$results"
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

run() { # set tool round
    local set=$1 tool=$2 round=$3 db="t_${2}_${3}" start end rss="" src="$src_base/$1?sslmode=disable"
    local dst="$dst_base/$db?sslmode=disable"
    psql_dst postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    rm -rf "$work/dump"
    sync
    start=$(date +%s.%N)
    case $tool in
        ours)
            # --no-sync: a copy like the others' (the source has wal_level=logical).
            /usr/bin/time -f "%M" -o "$work/rss" "$ours" init --no-sync --source "$src" --target "$dst" \
                --jobs "$jobs" --progress none 2>"$work/ours.log" || { cat "$work/ours.log"; exit 1; }
            rss=$(( $(cat "$work/rss") / 1024 ))
            ;;
        pg_dump)
            "$bin/pg_dump" -Fc -Z0 "$src" | "$bin/pg_restore" -d "$dst"
            ;;
        pg_dump_dir)
            "$bin/pg_dump" -Fd -Z0 -j "$jobs" -f "$work/dump" "$src"
            "$bin/pg_restore" -j "$jobs" -d "$dst" "$work/dump"
            ;;
        pgcopydb)
            rm -rf "$work/pgcopydb"
            pgcopydb clone --source "$src" --target "$dst" --table-jobs "$jobs" --index-jobs "$jobs" \
                --dir "$work/pgcopydb" >"$work/pgcopydb.log" 2>&1 || { tail -20 "$work/pgcopydb.log"; exit 1; }
            ;;
    esac
    end=$(date +%s.%N)
    local secs; secs=$(echo "$end - $start" | bc)
    printf "  %-11s round %d  %8.2f s%s\n" "$tool" "$round" "$secs" "${rss:+ (peak RSS ${rss} MB)}"
    echo "$set $tool $secs ${rss:--}" >> "$results"
    if [ "$tool" = ours ]; then
        # Our per-phase timeline, from the summary `init` prints.
        awk '/^step/{p=1; next} p && NF==2 {printf "%s=%s ", $1, $2} p && NF>2 {n=$NF; $NF=""; gsub(/ +$/,""); gsub(/ /,"_"); printf "%s=%s ", $0, n}' \
            "$work/ours.log" > "$work/phases.$set.$round"
        echo "$secs $(cat "$work/phases.$set.$round")" >> "$work/phases.$set"
    fi
    local want got
    want=$(psql_src "$set" -c "SELECT $(check_query "$set")")
    got=$(psql_dst "$db" -c "SELECT $(check_query "$set")")
    [ "$want" = "$got" ] || { echo "$tool: $got rows in the copy's largest tables, the source has $want" >&2; exit 1; }
    if [ "$tool" != pg_dump_dir ] || [ "$round" -ne "$rounds" ]; then rm -rf "$work/dump"; fi
    psql_dst postgres -c "DROP DATABASE $db"
}

# The floor: the source read once (every table, binary COPY to nowhere, JOBS at a time), the
# target loading the directory dump's files (TRUNCATE + COPY FREEZE per table, JOBS at a time,
# into the schema without indexes), and the post-data section alone on the loaded tables.
floor_set() {
    local set=$1 db=floor_$1 t0 t1 t2 t3
    [ -d "$work/dump" ] || "$bin/pg_dump" -Fd -Z0 -j "$jobs" -f "$work/dump" "$src_base/$set?sslmode=disable"
    chmod -R a+rX "$work/dump"
    psql_dst postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    "$bin/pg_restore" --section=pre-data -d "$dst_base/$db?sslmode=disable" "$work/dump"
    sync
    t0=$(date +%s.%N)
    psql_src "$set" -c "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY c.relpages DESC" |
        xargs -P "$jobs" -I{} psql -X -q "$src_base/$set?sslmode=disable" -c "COPY {} TO STDOUT (FORMAT binary)" -o /dev/null
    t1=$(date +%s.%N)
    # "3375; 0 16398 TABLE DATA public pgbench_accounts postgres" → 3375.dat holds its rows.
    "$bin/pg_restore" -l "$work/dump" | awk '$4 == "TABLE" && $5 == "DATA" {print $1, $6, $7}' | tr -d ';' |
        sort -k1,1n | while read -r id schema table; do
            printf '%s\t%s\n' "$(stat -c %s "$work/dump/$id.dat")" "BEGIN; TRUNCATE \"$schema\".\"$table\"; COPY \"$schema\".\"$table\" FROM '$work/dump/$id.dat' (FREEZE); COMMIT;"
        done | sort -rn | cut -f2 | tr '\n' '\0' |
        xargs -0 -P "$jobs" -I{} psql -X -q -v ON_ERROR_STOP=1 "$dst_base/$db?sslmode=disable" -c {}
    t2=$(date +%s.%N)
    "$bin/pg_restore" --section=post-data -j "$jobs" -d "$dst_base/$db?sslmode=disable" "$work/dump"
    t3=$(date +%s.%N)
    psql_dst postgres -c "DROP DATABASE $db"
    rm -rf "$work/dump"
    echo "$set $(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1" | bc) $(echo "$t3 - $t2" | bc)" >> "$work/floor"
    printf "  floor: read %.2f s, load %.2f s, post-data %.2f s\n" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)"
}

declare -A size_gb size_pretty
for set in $sets; do build_set "$set"; done
if [ "$rounds" -eq 0 ]; then echo "datasets ready in $keep"; exit 0; fi
for set in $sets; do
    size_gb[$set]=$(psql_src "$set" -c "SELECT round(pg_database_size(current_database()) / 1e9, 3)")
    size_pretty[$set]=$(psql_src "$set" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
    echo "== $set (${size_pretty[$set]}): $rounds rounds, alternating, $jobs jobs"
    read -ra order <<< "$tools"
    for r in $(seq 1 "$rounds"); do
        for tool in "${order[@]}"; do run "$set" "$tool" "$r"; done
        # Rotate, so that no tool always runs right after the same one.
        order=("${order[@]:1}" "${order[0]}")
    done
    [ "$floor" = 1 ] && floor_set "$set"
done

echo
echo "== medians of $rounds ($(nproc) cores, $(free -g | awk '/^Mem/{print $2}') GiB; PostgreSQL $("$bin/postgres" -V | awk '{print $3}'); both servers on this machine; $(date -u +%Y-%m-%d))"
printf "| %-8s | %-9s | %-26s | %9s | %7s | %-16s | %8s |\n" set size tool median "s/GB" "ratio to fastest" "peak RSS"
printf "|%s|\n" "----------|-----------|----------------------------|-----------|---------|------------------|----------"
for set in $sets; do
    best=""
    for tool in $tools; do
        [ "$tool" = ours ] && continue
        m=$(awk -v s="$set" -v t="$tool" '$1==s && $2==t {print $3}' "$results" | median)
        if [ -z "$best" ] || [ "$(echo "$m < $best" | bc)" = 1 ]; then best=$m; fi
    done
    for tool in $tools; do
        m=$(awk -v s="$set" -v t="$tool" '$1==s && $2==t {print $3}' "$results" | median)
        rss=$(awk -v s="$set" -v t="$tool" '$1==s && $2==t && $4!="-" {print $4}' "$results" | sort -n | tail -1)
        case $tool in
            ours) label="postgres-seren-replicator" ;;
            pg_dump) label="pg_dump -Fc | pg_restore" ;;
            pg_dump_dir) label="pg_dump -Fd -j | pg_restore -j" ;;
            pgcopydb) label="pgcopydb clone" ;;
        esac
        printf "| %-8s | %-9s | %-26s | %7.2f s | %7.2f | %16.2f | %8s |\n" "$set" "${size_pretty[$set]}" "$label" "$m" \
            "$(echo "$m / ${size_gb[$set]}" | bc -l)" "$(echo "$m / $best" | bc -l)" "${rss:+$rss MB}"
    done
done
echo
echo "== our phases (the median run of each set), against the floor"
for set in $sets; do
    [ -f "$work/phases.$set" ] || continue
    med=$(awk '{print $1}' "$work/phases.$set" | median)
    line=$(awk -v m="$med" '$1==m {$1=""; print; exit}' "$work/phases.$set")
    echo "$set: $line"
    if [ -f "$work/floor" ]; then
        awk -v s="$set" '$1==s {printf "  floor: read %.2f s, load %.2f s, post-data %.2f s; load + post-data %.2f s\n", $2, $3, $4, $3+$4}' "$work/floor"
    fi
done

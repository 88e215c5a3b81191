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
ensure_pg_bindir_tool
ours="$CARGO_TARGET_DIR/release/postgres-seren-replicator"
system_major=$(pg_major "$(pg_bindir)")
pairs=${PAIRS:-$system_major:$system_major}
for pair in $pairs; do
    [[ $pair =~ ^[0-9]+:[0-9]+$ ]] || { echo "PAIRS: '$pair' is not SOURCE:TARGET (e.g. 15:18)" >&2; exit 2; }
done

keep=${SEREN_BENCH_DIR:-/var/tmp/seren-bench}
mkdir -p "$keep"
work=$(mktemp -d /tmp/seren-bench.XXXXXX)
chmod 755 "$work"
src_port=$(free_port); dst_port=$(free_port)
settings=(shared_buffers=512MB max_wal_size=8GB checkpoint_timeout=30min max_connections=100
          fsync=on full_page_writes=on synchronous_commit=on)
src_bin="" src_dir="" dst_bin="" dst_dir="" cbin=""
# A kept source per major (the system's in $keep/source, as before pairs): created once,
# started for its pairs.
start_source() {
    local major=$1
    src_bin=$(pg_server_bindir "$major")
    src_dir="$keep/source"; [ "$major" = "$system_major" ] || src_dir="$keep/source-$major"
    local opts="-p $src_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$keep -c wal_level=logical"
    # The source takes no writes during the runs: a small max_wal_size keeps its pg_wal small.
    for s in "${settings[@]}" max_wal_size=1GB; do opts="$opts -c $s"; done
    if [ ! -f "$src_dir/PG_VERSION" ]; then
        [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$keep"
        as_server_user "$src_bin/initdb" -D "$src_dir" -U postgres -A trust -E UTF8 --locale=C >/dev/null
    fi
    as_server_user "$src_bin/pg_ctl" start -w -D "$src_dir" -l "$src_dir.log" -o "$opts" >/dev/null
    psql_src postgres -c CHECKPOINT
}
stop_source() {
    if [ -n "$src_dir" ]; then as_server_user "$src_bin/pg_ctl" stop -m fast -D "$src_dir" >/dev/null 2>&1 || true; fi
    src_dir=""
}
start_target() {
    dst_bin=$(pg_server_bindir "$1")
    dst_dir="$work/target-$1"
    # shellcheck disable=SC2086 # TARGET_SETTINGS is a list
    PG_BINDIR=$dst_bin start_cluster "$dst_dir" "$dst_port" "${settings[@]}" ${TARGET_SETTINGS:-}
}
stop_target() {
    if [ -n "$dst_dir" ]; then PG_BINDIR=$dst_bin stop_cluster "$dst_dir"; rm -rf "$dst_dir"; fi
    dst_dir=""
}
cleanup() {
    stop_source
    stop_target
    rm -rf "$work"
}
trap cleanup EXIT
src_base="postgresql://postgres@127.0.0.1:$src_port"
dst_base="postgresql://postgres@127.0.0.1:$dst_port"
psql_src() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" "$cbin/psql" -X -q -At -v ON_ERROR_STOP=1 "$src_base/$db?sslmode=disable" "$@"; }
psql_dst() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" "$cbin/psql" -X -q -At -v ON_ERROR_STOP=1 "$dst_base/$db?sslmode=disable" "$@"; }

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
            "$cbin/pgbench" -q -i -s 30 "$src_base/small?sslmode=disable" >/dev/null 2>&1
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
            "$cbin/pgbench" -q -i -s 300 "$src_base/pgbench?sslmode=disable" >/dev/null 2>&1
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
                --jobs "$jobs" --pg-bindir "$cbin" --progress none 2>"$work/ours.log" || { cat "$work/ours.log"; exit 1; }
            rss=$(( $(cat "$work/rss") / 1024 ))
            ;;
        pg_dump)
            "$cbin/pg_dump" -Fc -Z0 "$src" | "$cbin/pg_restore" -d "$dst"
            ;;
        pg_dump_dir)
            "$cbin/pg_dump" -Fd -Z0 -j "$jobs" -f "$work/dump" "$src"
            "$cbin/pg_restore" -j "$jobs" -d "$dst" "$work/dump"
            ;;
        pgcopydb)
            rm -rf "$work/pgcopydb"
            # pgcopydb runs the pg_dump and pg_restore it finds first on PATH. A peer that cannot
            # copy this pair is reported as failed, not timed.
            if ! PATH="$cbin:$PATH" pgcopydb clone --source "$src" --target "$dst" --table-jobs "$jobs" \
                --index-jobs "$jobs" --dir "$work/pgcopydb" >"$work/pgcopydb.log" 2>&1; then
                echo "  pgcopydb   round $round  failed: $(grep -m1 -E 'ERROR|FATAL' "$work/pgcopydb.log" | cut -c1-200)"
                echo "$pair $set $tool failed -" >> "$results"
                psql_dst postgres -c "DROP DATABASE $db"
                return 0
            fi
            ;;
    esac
    end=$(date +%s.%N)
    local secs; secs=$(echo "$end - $start" | bc)
    printf "  %-11s round %d  %8.2f s%s\n" "$tool" "$round" "$secs" "${rss:+ (peak RSS ${rss} MB)}"
    echo "$pair $set $tool $secs ${rss:--}" >> "$results"
    if [ "$tool" = ours ]; then
        # Our per-phase timeline, from the summary `init` prints.
        awk '/^step/{p=1; next} p && NF==2 {printf "%s=%s ", $1, $2} p && NF>2 {n=$NF; $NF=""; gsub(/ +$/,""); gsub(/ /,"_"); printf "%s=%s ", $0, n}' \
            "$work/ours.log" > "$work/phases.$pair.$set.$round"
        echo "$secs $(cat "$work/phases.$pair.$set.$round")" >> "$work/phases.$pair.$set"
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
    [ -d "$work/dump" ] || "$cbin/pg_dump" -Fd -Z0 -j "$jobs" -f "$work/dump" "$src_base/$set?sslmode=disable"
    chmod -R a+rX "$work/dump"
    psql_dst postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    "$cbin/pg_restore" --section=pre-data -d "$dst_base/$db?sslmode=disable" "$work/dump"
    sync
    t0=$(date +%s.%N)
    psql_src "$set" -c "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY c.relpages DESC" |
        xargs -P "$jobs" -I{} psql -X -q "$src_base/$set?sslmode=disable" -c "COPY {} TO STDOUT (FORMAT binary)" -o /dev/null
    t1=$(date +%s.%N)
    # "3375; 0 16398 TABLE DATA public pgbench_accounts postgres" → 3375.dat holds its rows.
    "$cbin/pg_restore" -l "$work/dump" | awk '$4 == "TABLE" && $5 == "DATA" {print $1, $6, $7}' | tr -d ';' |
        sort -k1,1n | while read -r id schema table; do
            printf '%s\t%s\n' "$(stat -c %s "$work/dump/$id.dat")" "BEGIN; TRUNCATE \"$schema\".\"$table\"; COPY \"$schema\".\"$table\" FROM '$work/dump/$id.dat' (FREEZE); COMMIT;"
        done | sort -rn | cut -f2 | tr '\n' '\0' |
        xargs -0 -P "$jobs" -I{} psql -X -q -v ON_ERROR_STOP=1 "$dst_base/$db?sslmode=disable" -c {}
    t2=$(date +%s.%N)
    "$cbin/pg_restore" --section=post-data -j "$jobs" -d "$dst_base/$db?sslmode=disable" "$work/dump"
    t3=$(date +%s.%N)
    psql_dst postgres -c "DROP DATABASE $db"
    rm -rf "$work/dump"
    echo "$pair $set $(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1" | bc) $(echo "$t3 - $t2" | bc)" >> "$work/floor"
    printf "  floor: read %.2f s, load %.2f s, post-data %.2f s\n" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)"
}

declare -A size_gb size_pretty versions
for pair in $pairs; do
    s_major=${pair%:*} t_major=${pair#*:}
    cbin=$(pg_client_bindir "$s_major" "$t_major")
    start_source "$s_major"
    for set in $sets; do build_set "$set"; done
    if [ "$rounds" -eq 0 ]; then stop_source; continue; fi
    start_target "$t_major"
    versions[$pair]="$("$src_bin/postgres" -V | awk '{print $3}') → $("$dst_bin/postgres" -V | awk '{print $3}'), client tools $("$cbin/pg_dump" -V | awk '{print $3}')"
    for set in $sets; do
        size_gb[$pair.$set]=$(psql_src "$set" -c "SELECT round(pg_database_size(current_database()) / 1e9, 3)")
        size_pretty[$pair.$set]=$(psql_src "$set" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
        echo "== $set (${size_pretty[$pair.$set]}), PostgreSQL ${versions[$pair]}: $rounds rounds, alternating, $jobs jobs"
        read -ra order <<< "$tools"
        for r in $(seq 1 "$rounds"); do
            for tool in "${order[@]}"; do run "$set" "$tool" "$r"; done
            # Rotate, so that no tool always runs right after the same one.
            order=("${order[@]:1}" "${order[0]}")
        done
        [ "$floor" = 1 ] && floor_set "$set"
    done
    stop_target
    stop_source
done
if [ "$rounds" -eq 0 ]; then echo "datasets ready in $keep"; exit 0; fi

echo
echo "== medians of $rounds ($(nproc) cores, $(free -g | awk '/^Mem/{print $2}') GiB; both servers on this machine; $(date -u +%Y-%m-%d))"
for pair in $pairs; do echo "   ${pair/:/ → }: PostgreSQL ${versions[$pair]}"; done
times_of() { awk -v p="$1" -v s="$2" -v t="$3" '$1==p && $2==s && $3==t && $4!="failed" {print $4}' "$results"; }
printf "| %-7s | %-8s | %-9s | %-26s | %9s | %7s | %-16s | %8s |\n" servers set size tool median "s/GB" "ratio to fastest" "peak RSS"
printf "|%s|\n" "---------|----------|-----------|----------------------------|-----------|---------|------------------|----------"
for pair in $pairs; do
    for set in $sets; do
        best=""
        for tool in $tools; do
            [ "$tool" = ours ] && continue
            m=$(times_of "$pair" "$set" "$tool" | median)
            [ -n "$m" ] || continue
            if [ -z "$best" ] || [ "$(echo "$m < $best" | bc)" = 1 ]; then best=$m; fi
        done
        for tool in $tools; do
            m=$(times_of "$pair" "$set" "$tool" | median)
            rss=$(awk -v p="$pair" -v s="$set" -v t="$tool" '$1==p && $2==s && $3==t && $5!="-" {print $5}' "$results" | sort -n | tail -1)
            case $tool in
                ours) label="postgres-seren-replicator" ;;
                pg_dump) label="pg_dump -Fc | pg_restore" ;;
                pg_dump_dir) label="pg_dump -Fd -j | pg_restore -j" ;;
                pgcopydb) label="pgcopydb clone" ;;
            esac
            if [ -z "$m" ]; then
                printf "| %-7s | %-8s | %-9s | %-26s | %9s | %7s | %16s | %8s |\n" "${pair/:/ → }" "$set" "${size_pretty[$pair.$set]}" "$label" failed "" "" ""
                continue
            fi
            ratio=""; [ -n "$best" ] && ratio=$(printf "%.2f" "$(echo "$m / $best" | bc -l)")
            printf "| %-7s | %-8s | %-9s | %-26s | %7.2f s | %7.2f | %16s | %8s |\n" "${pair/:/ → }" "$set" "${size_pretty[$pair.$set]}" "$label" "$m" \
                "$(echo "$m / ${size_gb[$pair.$set]}" | bc -l)" "$ratio" "${rss:+$rss MB}"
        done
    done
done
echo
echo "== our phases (the median run of each set), against the floor"
for pair in $pairs; do
    for set in $sets; do
        [ -f "$work/phases.$pair.$set" ] || continue
        med=$(awk '{print $1}' "$work/phases.$pair.$set" | median)
        line=$(awk -v m="$med" '$1==m {$1=""; print; exit}' "$work/phases.$pair.$set")
        echo "${pair/:/ → } $set: $line"
        if [ -f "$work/floor" ]; then
            awk -v p="$pair" -v s="$set" '$1==p && $2==s {printf "  floor: read %.2f s, load %.2f s, post-data %.2f s; load + post-data %.2f s\n", $3, $4, $5, $4+$5}' "$work/floor"
        fi
    done
done

#!/usr/bin/env bash
# How fast a subscription applies changes sent as text against sent in binary (CREATE
# SUBSCRIPTION … WITH (binary = …)), per pair of servers: changes pile up in the slot while the
# subscription is disabled (300,000 inserts into a table of jsonb, numeric, bytea, arrays,
# timestamptz, float8 and interval; an update of a third of them; 10,000 pgbench transactions),
# then it is enabled and timed until the slot confirms them all, and the table's rows are
# compared. Text and binary alternate, ROUNDS each (default 2). About a minute per pair. A 12
# or 13 publisher cannot send binary (the subscriber does not ask it to): both runs are text.
#
#   ./scripts/bench-apply.sh [SOURCE:TARGET ...]     default: the system's major into itself
#
# Majors other than the system's come from the tests' pinned downloads (pg-bindir), as in
# scripts/bench.sh; both servers run on this machine with fsync on.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_postgres
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
ensure_pg_bindir_tool
system_major=$(pg_major "$(pg_bindir)")
rounds=${ROUNDS:-2}
pairs=("$@"); [ ${#pairs[@]} -gt 0 ] || pairs=("$system_major:$system_major")

work=$(mktemp -d /tmp/seren-bench-apply.XXXXXX)
chmod 755 "$work"
sbin="" tbin=""
cleanup() {
    [ -z "$sbin" ] || PG_BINDIR=$sbin stop_cluster "$work/s"
    [ -z "$tbin" ] || PG_BINDIR=$tbin stop_cluster "$work/t"
    rm -rf "$work"
}
trap cleanup EXIT
settings=(shared_buffers=512MB max_wal_size=8GB fsync=on full_page_writes=on synchronous_commit=on wal_level=logical)
schema="CREATE TABLE wide (id bigint PRIMARY KEY, doc jsonb, amount numeric(18,4), payload bytea,
        tags text[], scores int[], created timestamptz, f float8, iv interval)"
results=()
for pair in "${pairs[@]}"; do
    [[ $pair =~ ^[0-9]+:[0-9]+$ ]] || { echo "'$pair' is not SOURCE:TARGET (e.g. 15:18)" >&2; exit 2; }
    sbin=$(pg_server_bindir "${pair%:*}"); tbin=$(pg_server_bindir "${pair#*:}")
    cbin=$(pg_client_bindir "${pair%:*}" "${pair#*:}")
    sp=$(free_port); tp=$(free_port)
    PG_BINDIR=$sbin start_cluster "$work/s" "$sp" "${settings[@]}"
    PG_BINDIR=$tbin start_cluster "$work/t" "$tp" "${settings[@]}"
    S="postgresql://postgres@127.0.0.1:$sp/postgres?sslmode=disable"
    T="postgresql://postgres@127.0.0.1:$tp/postgres?sslmode=disable"
    on_s() { PGOPTIONS="-c client_min_messages=warning" "$cbin/psql" -X -q -At -v ON_ERROR_STOP=1 "$S" "$@"; }
    on_t() { PGOPTIONS="-c client_min_messages=warning" "$cbin/psql" -X -q -At -v ON_ERROR_STOP=1 "$T" "$@"; }
    on_s -c "$schema"; on_t -c "$schema"
    "$cbin/pgbench" -q -i -s 5 "$S" >/dev/null 2>&1
    "$cbin/pg_dump" -s -t 'pgbench_*' "$S" | on_t >/dev/null
    on_s -c "CREATE PUBLICATION bench FOR ALL TABLES"
    echo "== $pair: PostgreSQL $("$sbin/postgres" -V | awk '{print $3}') → $("$tbin/postgres" -V | awk '{print $3}')"
    for r in $(seq 1 "$rounds"); do
        for binary in false true; do
            on_t -c "TRUNCATE wide, pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
            on_t -c "CREATE SUBSCRIPTION bench CONNECTION 'host=127.0.0.1 port=$sp user=postgres dbname=postgres' PUBLICATION bench WITH (copy_data = false, binary = $binary)"
            until [ "$(on_s -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bench'")" = 1 ]; do sleep 0.1; done
            on_t -c "ALTER SUBSCRIPTION bench DISABLE"
            until [ "$(on_s -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bench'")" = 0 ]; do sleep 0.1; done
            on_s -c "TRUNCATE wide"
            for b in $(seq 0 99); do
                on_s -c "INSERT INTO wide SELECT g, jsonb_build_object('user', 'u' || (g % 5000), 'n', g, 'tags', jsonb_build_array('a', g % 7, 'b')),
                    (g * 3.1415)::numeric(18,4), decode(md5(g::text) || md5((g+1)::text), 'hex'), ARRAY['t' || (g % 11), 't' || (g % 13)],
                    ARRAY[g % 100, g % 1000, g], now() - (g || ' seconds')::interval, g / 7.0, (g || ' minutes')::interval
                    FROM generate_series($((b * 3000 + 1)), $((b * 3000 + 3000))) g"
            done
            on_s -c "UPDATE wide SET amount = amount + 1, created = created + interval '1 day' WHERE id % 3 = 0"
            "$cbin/pgbench" -n -c 2 -t 5000 "$S" >/dev/null 2>&1
            lsn=$(on_s -c "SELECT pg_current_wal_lsn()")
            t0=$(date +%s.%N)
            on_t -c "ALTER SUBSCRIPTION bench ENABLE"
            until [ "$(on_s -c "SELECT confirmed_flush_lsn >= '$lsn' FROM pg_replication_slots WHERE slot_name = 'bench'")" = t ]; do sleep 0.05; done
            t1=$(date +%s.%N)
            a=$(on_s -c "SELECT md5(string_agg(w::text, '' ORDER BY id)) FROM wide w")
            b=$(on_t -c "SELECT md5(string_agg(w::text, '' ORDER BY id)) FROM wide w")
            [ "$a" = "$b" ] || { echo "binary = $binary: the target's rows differ from the source's" >&2; exit 1; }
            secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
            printf "  round %d  binary = %-5s  %6.2f s to apply\n" "$r" "$binary" "$secs"
            results+=("$pair $binary $secs")
            on_t -c "DROP SUBSCRIPTION bench"
        done
    done
    PG_BINDIR=$sbin stop_cluster "$work/s"; PG_BINDIR=$tbin stop_cluster "$work/t"
    rm -rf "$work/s" "$work/t"
done
sbin="" tbin=""
echo
echo "| servers | text (median) | binary (median) | binary / text |"
echo "|---|---|---|---|"
for pair in "${pairs[@]}"; do
    t=$(printf '%s\n' "${results[@]}" | awk -v p="$pair" '$1==p && $2=="false" {print $3}' | median)
    b=$(printf '%s\n' "${results[@]}" | awk -v p="$pair" '$1==p && $2=="true" {print $3}' | median)
    printf "| %s | %.2f s | %.2f s | %.2f |\n" "${pair/:/ → }" "$t" "$b" "$(awk -v t="$t" -v b="$b" 'BEGIN {print b / t}')"
done

#!/usr/bin/env bash
# End to end, without AWS and without Docker: throwaway source and target clusters (pagila plus a
# table big enough to interrupt), the control plane on this machine (seren-coordinator with its
# SQLite store, key-file sealer and seren-worker processes), and then:
#   1. init --remote --dry-run prints the worker, size, duration and cost and submits nothing;
#      init --remote copies pagila; every table of the target equals the source;
#   2. a bad source host: the job fails with source_unreachable, and the CLI says so;
#   3. Ctrl-C detaches the CLI from a running job, which goes on; then a cancel mid-copy: the
#      job ends cancelled and its worker is gone;
#   4. three workers of one job (with sync) killed with SIGKILL at random moments: the reaper
#      starts the next each time, the fourth resumes and completes the job (attempt 4/4), the
#      target equal to the source; a job allowed one worker fails with heartbeat_lost instead;
#   5. the coordinator restarted while a job runs: the CLI re-attaches and sees it complete;
#   6. two submits with one Idempotency-Key: one job, one worker;
#   7. verify --remote and validate --remote: the reports come back from a worker, and a row
#      changed on the target makes verify exit 1 naming its table.
# Exits 0 only when every check holds; removes everything it started.
#
# Against a deployed stack: set SEREN_REMOTE_API and SEREN_API_KEY, and SEREN_IT_SOURCE_URL and
# SEREN_IT_TARGET_URL to two PostgreSQL servers that both this machine and the workers reach, as
# a role that may create databases (the database part of the URLs is ignored). The script then
# creates seren_it_* databases there, runs checks 1, 2, 3, 6 and 7 through the deployed API (4
# and 5 need the local processes), and drops the databases afterwards.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_postgres
ensure_tools
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"

datasets=$(datasets_dir)

echo "== building"
build_debug_binaries
cli="$CARGO_TARGET_DIR/debug/postgres-seren-replicator"

work=$(mktemp -d /tmp/seren-it.XXXXXX)
chmod 755 "$work"
STACK_PID=""
remote=false
if [ -n "${SEREN_REMOTE_API:-}" ]; then
    remote=true
    : "${SEREN_API_KEY:?set SEREN_API_KEY to an API key of the deployed stack}"
    : "${SEREN_IT_SOURCE_URL:?set SEREN_IT_SOURCE_URL to a source server the workers reach (a role that may create databases)}"
    : "${SEREN_IT_TARGET_URL:?set SEREN_IT_TARGET_URL to a target server the workers reach (a role that may create databases)}"
fi
prefix=""; $remote && prefix="seren_it_"
# Seconds to wait for a job to reach a state: an EC2 worker needs a minute or two to boot.
T=60; $remote && T=600
dbs=(pagila big pagila_idem shop big_cancel big_killed big_limit big_restart)
cleanup() {
    if [ -n "$STACK_PID" ]; then kill "$STACK_PID" 2>/dev/null || true; wait "$STACK_PID" 2>/dev/null || true; fi
    pkill -f "$work/stack" 2>/dev/null || true
    if $remote; then
        for db in "${dbs[@]}"; do
            psql -X -q -d "$(db_url "$SRC_BASE" postgres)" -c "DROP DATABASE IF EXISTS ${prefix}$db WITH (FORCE)" 2>/dev/null || true
            psql -X -q -d "$(db_url "$DST_BASE" postgres)" -c "DROP DATABASE IF EXISTS ${prefix}$db WITH (FORCE)" 2>/dev/null || true
        done
    else
        stop_cluster "$work/source"; stop_cluster "$work/target"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

if $remote; then
    SRC_BASE=$SEREN_IT_SOURCE_URL; DST_BASE=$SEREN_IT_TARGET_URL
    echo "== deployed stack at $SEREN_REMOTE_API"
else
    src_port=$(free_port); dst_port=$(free_port)
    start_cluster "$work/source" "$src_port" wal_level=logical
    start_cluster "$work/target" "$dst_port"
    SRC_BASE="postgresql://postgres@127.0.0.1:$src_port/postgres?sslmode=disable"
    DST_BASE="postgresql://postgres@127.0.0.1:$dst_port/postgres?sslmode=disable"
fi
src() { db_url "$SRC_BASE" "${prefix}$1"; }
dst() { db_url "$DST_BASE" "${prefix}$1"; }
psql_src() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$(src "$1")" "${@:2}"; }
for db in "${dbs[@]}"; do
    for base in "$SRC_BASE" "$DST_BASE"; do
        PGOPTIONS="-c client_min_messages=warning" psql -X -q -d "$(db_url "$base" postgres)" \
            -c "DROP DATABASE IF EXISTS ${prefix}$db WITH (FORCE)" >/dev/null
    done
done
psql -X -q -v ON_ERROR_STOP=1 -d "$(db_url "$SRC_BASE" postgres)" -c "CREATE DATABASE ${prefix}pagila" -c "CREATE DATABASE ${prefix}big"
psql_src pagila -f "$datasets/pagila/pagila-schema.sql" -f "$datasets/pagila/pagila-data.sql" >/dev/null
# About 1.4 GB of rows: a copy that lasts long enough to be interrupted three times, also on a
# fast machine (with 700 MB a whole copy once took 3 s here, less than the kills below wait).
psql_src big -c "CREATE TABLE wide (id bigint PRIMARY KEY, payload text)" \
    -c "INSERT INTO wide SELECT g, repeat(md5(g::text), 12) FROM generate_series(1, 3000000) g"

if ! $remote; then
    # Short timeouts so that the reaper acts within the test: workers heartbeat every second and
    # the reaper fails a job after 5 s of silence, checking every second.
    export SEREN_HEARTBEAT_SECS=1 SEREN_HEARTBEAT_TIMEOUT_SECS=5 SEREN_REAP_INTERVAL_SECS=1
    start_local_stack "$work/stack"
    export SEREN_REMOTE_API="$STACK_URL" SEREN_API_KEY="$STACK_KEY"
    echo "== local stack at $STACK_URL"
fi

job_field() { "$cli" jobs show "$1" --json | python3 -c "import json,sys; j=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'j': j}))" "$2"; }
wait_for() { # JOB PYTHON-CONDITION SECONDS
    local _
    for _ in $(seq 1 $(($3 * 5))); do
        [ "$(job_field "$1" "$2")" = "True" ] && return 0
        sleep 0.2
    done
    return 1
}

echo "== 1. init --remote --dry-run estimates, then init --remote copies pagila"
before=$("$cli" jobs list --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)['jobs']))")
if SEREN_SOURCE_URL=$(src pagila) SEREN_TARGET_URL=$(dst pagila) "$cli" init --remote --dry-run >"$work/1d.out" 2>&1 \
    && grep -q "^worker    " "$work/1d.out" && grep -q "^source    .*(pg_database_size)" "$work/1d.out" \
    && grep -q "^duration  ~" "$work/1d.out" && grep -q "^cost      " "$work/1d.out" \
    && [ "$("$cli" jobs list --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)['jobs']))")" = "$before" ]; then
    pass "dry run: $(grep '^duration' "$work/1d.out" | cut -c1-60)…, nothing submitted"
else
    fail "dry run"; cat "$work/1d.out"
fi
if SEREN_SOURCE_URL=$(src pagila) SEREN_TARGET_URL=$(dst pagila) "$cli" init --remote --yes >"$work/1.out" 2>&1 \
    && compare_databases "$(src pagila)" "$(dst pagila)"; then
    pass "remote init: $COMPARED_TABLES tables identical"
else
    fail "remote init"; cat "$work/1.out"
fi

echo "== 2. a bad source host"
if SEREN_SOURCE_URL="postgresql://app:s3cr3t-pw@db.nonexistent.invalid:5432/shop?connect_timeout=3" \
    SEREN_TARGET_URL=$(dst shop) "$cli" init --remote --yes >"$work/2.out" 2>&1; then
    fail "a bad source host completed"
elif grep -q "source_unreachable" "$work/2.out" && grep -q "db.nonexistent.invalid" "$work/2.out" \
    && ! grep -q "s3cr3t-pw" "$work/2.out"; then
    pass "bad source host: $(grep -o 'job [0-9a-f-]* failed[^(]*' "$work/2.out" | head -1 | cut -c1-90)…"
else
    fail "bad source host message"; cat "$work/2.out"
fi

echo "== 3. Ctrl-C detaches, then cancel mid-copy"
# The CLI follows the job; SIGINT (Ctrl-C) detaches it and leaves the job running. A shell
# without job control starts background commands with SIGINT ignored, hence `set -m`.
set -m
SEREN_SOURCE_URL=$(src big) SEREN_TARGET_URL=$(dst big_cancel) "$cli" init --remote --yes --progress log >"$work/3.out" 2>&1 &
watcher=$!
set +m
id=""
for _ in $(seq 1 100); do
    id=$(grep -o 'submitted init job [0-9a-f-]*' "$work/3.out" 2>/dev/null | awk '{print $4}' || true)
    [ -n "$id" ] && break
    sleep 0.1
done
if [ -n "$id" ] && wait_for "$id" "j['status'] == 'running' and (j.get('progress') or {}).get('phase') == 'data'" "$T"; then
    kill -INT "$watcher"
    set +e; wait "$watcher"; rc=$?; set -e
    if [ "$rc" = 130 ] && grep -q "detached from job $id; it goes on.*jobs watch $id" "$work/3.out" \
        && [ "$(job_field "$id" "j['status']")" = running ]; then
        pass "Ctrl-C: the CLI detached (exit 130, re-attach with jobs watch) and the job runs on"
    else
        fail "Ctrl-C: exit $rc, job $(job_field "$id" "j['status']")"; cat "$work/3.out"
    fi
    worker=$(job_field "$id" "j['instance_id']")
    "$cli" jobs cancel "$id" >/dev/null
    gone() { $remote && return 0; local _; for _ in $(seq 1 50); do kill -0 "${1#local-}" 2>/dev/null || return 0; sleep 0.1; done; return 1; }
    if wait_for "$id" "j['status'] == 'cancelled'" "$T" && gone "$worker"; then
        pass "cancel: job cancelled, worker $worker gone"
    else
        fail "cancel: $(job_field "$id" "j['status']")"
    fi
else
    fail "cancel: the job never reached the data phase (${id:-no job id}: $(cat "$work/3.out"))"
    kill "$watcher" 2>/dev/null || true
fi

if $remote; then
    echo "== 4 and 5 need the local stack's processes: skipped against a deployed stack"
else
echo "== 4. workers killed mid-copy"
# Three workers of one job (with sync) killed with SIGKILL at random moments of their run: the
# reaper replaces each, the fourth resumes and completes the job, the target equals the source,
# and the record lists the four workers. Then a job allowed one worker only: it fails, saying so.
id=$(SEREN_SOURCE_URL=$(src big) SEREN_TARGET_URL=$(dst big_killed) "$cli" init --remote --yes --max-attempts 4 --detach 2>/dev/null)
kills=0
for attempt in 1 2 3; do
    wait_for "$id" "j['status'] == 'running' and j['attempt'] == $attempt and (j.get('progress') or {}).get('phase') in ('schema', 'data', 'post-data')" 60 || break
    # The phase shows up to a heartbeat (1 s) late: kill within the next second.
    sleep "$(python3 -c 'import random; print(round(random.uniform(0, 1), 2))')"
    [ "$(job_field "$id" "(j['status'], j['attempt'])")" = "('running', $attempt)" ] || break
    kill -9 "$(job_field "$id" "j['instance_id'].split('-')[1]")"
    kills=$((kills + 1))
done
"$cli" jobs show "$id" >"$work/4.out" 2>&1 || true
if [ "$kills" = 3 ] && wait_for "$id" "j['status'] == 'completed'" $((T * 4)) \
    && [ "$(job_field "$id" "(j['attempt'], j['max_attempts'], j['error']['code'], len(j['usage']['workers']))")" = "(4, 4, 'heartbeat_lost', 4)" ] \
    && compare_databases "$(src big)" "$(dst big_killed)"; then
    pass "SIGKILL x3: workers 2, 3 and 4 resumed the job, the fourth completed it; $COMPARED_TABLES table(s) identical"
else
    fail "SIGKILL x3 ($kills kills): $(job_field "$id" "(j['status'], j['attempt'], j.get('error'))")"; cat "$work/4.out"
fi
id=$(SEREN_SOURCE_URL=$(src big) SEREN_TARGET_URL=$(dst big_limit) "$cli" init --remote --yes --max-attempts 1 --detach 2>/dev/null)
if wait_for "$id" "j['status'] == 'running' and (j.get('progress') or {}).get('phase') == 'data'" 60; then
    kill -9 "$(job_field "$id" "j['instance_id'].split('-')[1]")"
    if wait_for "$id" "j['status'] == 'failed'" "$T" \
        && [ "$(job_field "$id" "(j['attempt'], j['error']['code'], 'no attempt left' in j['error']['message'])")" = "(1, 'heartbeat_lost', True)" ]; then
        pass "over the limit: $(job_field "$id" "j['error']['code'] + ': ' + j['error']['message']")"
    else
        fail "over the limit: $(job_field "$id" "(j['status'], j['attempt'], j.get('error'))")"
    fi
else
    fail "over the limit: the job never reached the data phase"
fi

echo "== 5. the coordinator restarted while a job runs"
id=$(SEREN_SOURCE_URL=$(src big) SEREN_TARGET_URL=$(dst big_restart) "$cli" init --remote --yes --detach 2>/dev/null)
wait_for "$id" "j['status'] == 'running'" 60 || true
"$cli" jobs watch "$id" >"$work/5.out" 2>&1 &
watcher=$!
sleep 1
kill "$STACK_PID"; wait "$STACK_PID" 2>/dev/null || true
sleep 2
stack_url_before=$STACK_URL
# The same store and key file, on the same port.
port=${STACK_URL##*:}
(cd "$work/stack" && SEREN_API_KEY_SHA256=$(echo "$STACK_KEY" | "$CARGO_TARGET_DIR/debug/seren-coordinator" hash-key) \
    SEREN_LISTEN="127.0.0.1:$port" SEREN_WORKER_PROGRAM="$CARGO_TARGET_DIR/debug/seren-worker" \
    SEREN_WORKER_LOG_DIR="$work/stack/workers" exec "$CARGO_TARGET_DIR/debug/seren-coordinator" >>"$work/stack/coordinator.log" 2>&1) &
STACK_PID=$!
if wait "$watcher" && [ "$(job_field "$id" "j['status']")" = "completed" ] \
    && compare_databases "$(src big)" "$(dst big_restart)"; then
    pass "restart: the watch re-attached to $stack_url_before and saw the job complete"
else
    fail "restart: $(job_field "$id" "j['status']")"; cat "$work/5.out"
fi

fi

echo "== 6. one Idempotency-Key, two submits"
body=$(python3 -c "import json,sys; print(json.dumps({'command':'init','source_url':sys.argv[1],'target_url':sys.argv[2]}))" "$(src pagila)" "$(dst pagila_idem)")
api=${SEREN_REMOTE_API%/}
key="it-$$-$RANDOM"
# The key goes to curl in a private file, not on its command line.
(umask 077; printf 'x-api-key: %s\n' "$SEREN_API_KEY" >"$work/auth.header")
a=$(curl -sf -X POST "$api/jobs" -H @"$work/auth.header" -H "Idempotency-Key: $key" -d "$body")
b=$(curl -sf -X POST "$api/jobs" -H @"$work/auth.header" -H "Idempotency-Key: $key" -d "$body")
ida=$(echo "$a" | python3 -c "import json,sys; print(json.load(sys.stdin)['job_id'])")
idb=$(echo "$b" | python3 -c "import json,sys; print(json.load(sys.stdin)['job_id'])")
if $remote; then logs=1; else logs=$(find "$work/stack/workers" -name "$ida.log" | wc -l); fi
if [ "$ida" = "$idb" ] && [ "$logs" = 1 ] && wait_for "$ida" "j['status'] == 'completed'" "$T"; then
    pass "idempotency: one job ($ida), one worker"
else
    fail "idempotency: $ida vs $idb, $logs worker logs"
fi

echo "== 7. verify and validate on a worker"
# pagila as check 1 left it: equal. Then one row changed on the target: verify names the table.
if SEREN_SOURCE_URL=$(src pagila) SEREN_TARGET_URL=$(dst pagila) "$cli" verify --remote >"$work/7a.out" 2>&1 \
    && grep -q "^all [0-9]* tables equal" "$work/7a.out"; then
    psql -X -q -d "$(dst pagila)" -c "UPDATE actor SET last_name = 'CHANGED' WHERE actor_id = 7"
    set +e
    SEREN_SOURCE_URL=$(src pagila) SEREN_TARGET_URL=$(dst pagila) "$cli" verify --remote --json >"$work/7b.json" 2>"$work/7b.err"
    rc=$?
    set -e
    differing=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(','.join(t['table'] for t in r['tables'] if not t['equal']))" "$work/7b.json" 2>/dev/null || true)
    if [ "$rc" = 1 ] && [ "$differing" = "public.actor" ] && grep -q "1 of [0-9]* tables differ" "$work/7b.err"; then
        pass "remote verify: $(grep -o '^all [0-9]* tables equal' "$work/7a.out"), then exit 1 naming $differing"
    else
        fail "remote verify after a change: exit $rc, differing '$differing'"; cat "$work/7b.err"
    fi
else
    fail "remote verify"; cat "$work/7a.out"
fi
if SEREN_SOURCE_URL=$(src pagila) SEREN_TARGET_URL=$(dst shop) "$cli" validate --remote >"$work/7c.out" 2>&1 \
    && grep -q "^pass source.wal_level" "$work/7c.out"; then
    pass "remote validate: $(grep -c '^pass' "$work/7c.out") checks pass, $(grep -c '^warn' "$work/7c.out") warn"
else
    fail "remote validate"; cat "$work/7c.out"
fi

if [ "$failures" -ne 0 ]; then
    echo "test-integration FAILED: $failures check(s)"
    $remote || tail -20 "$work/stack/coordinator.log"
    exit 1
fi
if $remote; then echo "test-integration OK: 5 checks against $SEREN_REMOTE_API"; else echo "test-integration OK: 7 checks"; fi

#!/usr/bin/env bash
# The kill campaign: `init` with replication on a source with split tables, several hundred
# small tables and tables without a primary key is killed with SIGKILL at 20 moments spread over
# every phase, then recovered as a user would (`init --resume`, or a plain `init` when nothing
# was left to resume). After each round: `verify` and a row-by-row hash of every table (0 rows
# lost or duplicated), no replication slot or publication without its subscriber, and the
# application's UPDATE and DELETE still working on every source table. Prints the table of
# rounds; exits 1 when any round is not exact.
#
#   ./scripts/kill-campaign.sh [ROUNDS]        # default 20; about 8 minutes on 2 cores
#   ./scripts/kill-campaign.sh 10 --writes --phases data,post-data
#       # pgbench writes to the source throughout each round (the kill, the gap, the resume);
#       # the 10 moments of the data and post-data phases
#
# Not part of the normal test run (scripts/test.sh): it takes minutes, and the same faults are
# pinned one by one by crates/cli/tests/safety.rs and crates/replicator-core/tests/faults.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

rounds=${1:-20}
shift || true
ensure_postgres
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
cargo build -q -p postgres-seren-replicator
bin="$CARGO_TARGET_DIR/debug/postgres-seren-replicator"

work=$(mktemp -d /tmp/seren-kill-campaign.XXXXXX)
chmod 755 "$work"
src_port=$(free_port)
dst_port=$(free_port)
cleanup() {
    stop_cluster "$work/src"
    stop_cluster "$work/dst"
    rm -rf "$work"
}
trap cleanup EXIT
start_cluster "$work/src" "$src_port" wal_level=logical max_replication_slots=40 max_wal_senders=40 max_connections=200
start_cluster "$work/dst" "$dst_port" max_connections=200 max_logical_replication_workers=20 max_worker_processes=40

src="postgresql://postgres@127.0.0.1:$src_port/app?sslmode=disable"
psql -X -q -d "$(db_url "$src" postgres)" -c "CREATE DATABASE app"
echo "== building the source: 2 split tables, 300 small tables, tables without a primary key"
psql -X -q -v ON_ERROR_STOP=1 -d "$src" <<'SQL'
CREATE TABLE big (id bigint PRIMARY KEY, account int NOT NULL, note text, payload jsonb);
INSERT INTO big SELECT g, g % 1000, md5(g::text), jsonb_build_object('n', g, 'tag', md5((g * 7)::text))
  FROM generate_series(1, 400000) g;
CREATE INDEX big_account ON big (account);
-- No primary key, split too: a duplicated range would go unnoticed by any constraint.
CREATE TABLE events (at timestamptz NOT NULL, kind text, detail text);
INSERT INTO events SELECT now() - g * interval '1 second', 'k' || (g % 17), repeat(md5(g::text), 2)
  FROM generate_series(1, 300000) g;
CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO accounts SELECT g, 'account ' || g FROM generate_series(0, 999) g;
ALTER TABLE big ADD CONSTRAINT big_account_fk FOREIGN KEY (account) REFERENCES accounts (id);
CREATE TABLE audit_log (line text);
INSERT INTO audit_log SELECT 'line ' || g FROM generate_series(1, 5000) g;
CREATE SEQUENCE ticket_seq; SELECT setval('ticket_seq', 4242);
SELECT lo_from_bytea(0, convert_to(repeat('large object ', 1000), 'UTF8'));
DO $$ BEGIN FOR i IN 1..300 LOOP
  EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, v text, at timestamptz DEFAULT now())', i);
  EXECUTE format('INSERT INTO small_%s (id, v) SELECT g, md5(g::text) FROM generate_series(1, 100) g', i);
  EXECUTE format('CREATE INDEX ON small_%s (v)', i);
END LOOP; END $$;
ANALYZE;
SQL
size=$(psql -X -q -At -d "$src" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
echo "source: $size"

python3 scripts/kill_campaign.py --bin "$bin" --pg-bindir "$(pg_bindir)" --source "$src" \
    --target-base "postgresql://postgres@127.0.0.1:$dst_port" --rounds "$rounds" \
    --split "4MB" "$@"

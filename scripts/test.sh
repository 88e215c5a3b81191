#!/usr/bin/env bash
# The project's test command: installs what the tests need when it is missing (PostgreSQL
# server and client tools; moto's AWS server in .venv-moto), then runs the format check,
# clippy, every test, the end-to-end test of the remote path (test-integration.sh), a bounded
# fuzz run of the API against docs/openapi.json (scripts/fuzz-api.sh, schemathesis), and the
# static checks of the AWS packaging (scripts/check-packaging.sh: HCL, checkov, deploy.sh's dry
# run, the Lambda zips).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_postgres
ensure_tools
ensure_moto
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo test"
cargo test --workspace --all-features
echo "== test-integration.sh"
./test-integration.sh
echo "== fuzz-api.sh"
./scripts/fuzz-api.sh
echo "== check-packaging.sh"
./scripts/check-packaging.sh

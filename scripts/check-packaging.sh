#!/usr/bin/env bash
# Static checks of the AWS packaging, which cannot be applied here (no AWS account, no
# Terraform providers): every .tf and .pkr.hcl parses and keeps the design's promises
# (python-hcl2, scripts/check_hcl.py); checkov finds no failed check in infra/; terraform fmt
# and packer validate where those binaries exist; build-ami.sh's binary check; deploy.sh's dry
# run and prerequisite stop; and the Lambda zips built with cargo-lambda (unoptimized unless
# LAMBDA_PROFILE=dist).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seren-target}"

ensure_venv hcl2 'python-hcl2>=7,<9'
ensure_venv checkov 'checkov>=3.2,<4'
ensure_venv lambda 'cargo-lambda>=1.8,<2'
hcl2_py="$(tools_dir)/hcl2/bin/python"
checkov="$(tools_dir)/checkov/bin/checkov"
lambda_bin="$(tools_dir)/lambda/bin"

echo "== HCL: parse and check infra/*.tf and ami/*.pkr.hcl"
"$hcl2_py" scripts/check_hcl.py

echo "== checkov on infra/"
# Every skip must carry its reason next to the resource.
if grep -rn 'checkov:skip=' infra | grep -vE 'checkov:skip=CKV2?_AWS_[0-9]+:.{20,}'; then
    echo "a checkov skip above has no reason" >&2
    exit 1
fi
BC_SKIP_MAPPING=TRUE "$checkov" -d infra --framework terraform --skip-download \
    --compact --quiet

if command -v terraform >/dev/null 2>&1; then
    echo "== terraform fmt -check"
    terraform fmt -check -recursive infra 2>/dev/null
else
    echo "== terraform fmt: no terraform here, skipped"
fi
if command -v packer >/dev/null 2>&1; then
    echo "== packer fmt -check, packer validate"
    packer fmt -check ami
    packer validate -var binary_path=/bin/true ami/worker.pkr.hcl
else
    echo "== packer: not installed here, validate skipped (the template was parsed above)"
fi

echo "== build-ami.sh refuses a binary the AMI cannot run"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
build_debug_binaries
host_bin="$CARGO_TARGET_DIR/debug/seren-worker"
case "$(uname -m)" in
    x86_64) host_arch=x86_64 other_arch=arm64 ;;
    aarch64) host_arch=arm64 other_arch=x86_64 ;;
    *) host_arch="" ;;
esac
expect_fail() {
    local what="$1"
    shift
    if "$@" >"$tmp/out" 2>&1; then
        echo "build-ami.sh accepted $what" >&2
        exit 1
    fi
    echo "  refused $what: $(tail -n1 "$tmp/out")"
}
if [ -n "$host_arch" ]; then
    # The debug build links against this machine's glibc; fine when it asks for no newer one.
    ami/build-ami.sh --check-binary "$host_bin" --arch "$host_arch" | sed 's/^/  /' || true
    expect_fail "a $host_arch binary for $other_arch" ami/build-ami.sh --check-binary "$host_bin" --arch "$other_arch"
    cp "$host_bin" "$tmp/newer-glibc"
    printf 'GLIBC_2.39\0' >>"$tmp/newer-glibc"
    expect_fail "a binary needing glibc 2.39" ami/build-ami.sh --check-binary "$tmp/newer-glibc" --arch "$host_arch"
fi
expect_fail "a shell script" ami/build-ami.sh --check-binary scripts/test.sh --arch x86_64

echo "== setup-worker.sh installs the newest client major the image's repositories offer"
# dnf list output as Amazon Linux 2023 prints it: subpackages (-server, -contrib, -libs), headers
# and installed markers do not count, majors compare as numbers (9 < 18).
newest="$(ami/setup-worker.sh --newest-major <<'DNF'
Last metadata expiration check: 0:00:03 ago on Mon Dec  7 16:00:00 2026.
Installed Packages
postgresql15-private-libs.x86_64        15.10-1.amzn2023.0.1         @amazonlinux
Available Packages
postgresql15.x86_64                     15.14-1.amzn2023.0.1         amazonlinux
postgresql16.x86_64                     16.10-1.amzn2023.0.1         amazonlinux
postgresql17.aarch64                    17.6-1.amzn2023.0.1          amazonlinux
postgresql18.x86_64                     18.1-1.amzn2023.0.1          amazonlinux
postgresql19-server.x86_64              19.0-1.amzn2023.0.1          amazonlinux
postgresql9.x86_64                      9.6.24-1                     amazonlinux
DNF
)"
[ "$newest" = 18 ] || { echo "setup-worker.sh chose client major '$newest' from dnf's list, not 18" >&2; exit 1; }
none="$(ami/setup-worker.sh --newest-major <<<"postgresql17-server.x86_64  17.6-1  amazonlinux")"
[ -z "$none" ] || { echo "setup-worker.sh chose '$none' from a list without a client package" >&2; exit 1; }
for bad in 11 x 17.2; do
    expect_fail "--pg-major $bad" ami/build-ami.sh --pg-major "$bad" --dry-run --binary /bin/true
done
echo "  chose 18 of 15/16/17/18 (not a -server subpackage, not 9 by string order)"

echo "== deploy.sh --dry-run without AWS credentials"
no_aws=(env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE
    AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_EC2_METADATA_DISABLED=true)
"${no_aws[@]}" ./deploy.sh --dry-run >"$tmp/dry" 2>&1 || {
    cat "$tmp/dry"
    echo "deploy.sh --dry-run failed" >&2
    exit 1
}
for s in "prerequisites" "build the Lambdas" "worker AMI" "terraform apply" "smoke test" "dry run: nothing"; do
    grep -q "$s" "$tmp/dry" || { cat "$tmp/dry"; echo "deploy.sh --dry-run printed no '$s' step" >&2; exit 1; }
done
echo "  dry run printed every step and exited 0"
# Without --dry-run it stops at the first missing prerequisite: hide cargo-lambda.
mkdir -p "$tmp/bin"
for t in cargo rustup terraform packer curl git; do
    p="$(command -v "$t" 2>/dev/null)" && ln -s "$p" "$tmp/bin/$t"
done
if "${no_aws[@]}" PATH="$tmp/bin:/usr/bin:/bin" ./deploy.sh --yes >"$tmp/real" 2>&1; then
    echo "deploy.sh went on without cargo-lambda" >&2
    exit 1
fi
grep -q '^deploy.sh: cargo-lambda is missing: pip install cargo-lambda' "$tmp/real" || {
    cat "$tmp/real"
    echo "deploy.sh did not say that cargo-lambda is missing" >&2
    exit 1
}
echo "  without --dry-run: $(grep '^deploy.sh:' "$tmp/real")"

# The zips of the test run are built unoptimized (profile lambda-check, ~4 minutes on a fresh
# machine against ~13 for dist); LAMBDA_PROFILE=dist checks the profile deploy.sh ships.
profile=${LAMBDA_PROFILE:-lambda-check}
echo "== Lambda zips (cargo lambda build --profile $profile, x86_64)"
PATH="$lambda_bin:$PATH" cargo lambda build --profile "$profile" --x86-64 \
    --bin seren-coordinator --bin seren-reaper --output-format zip
for bin in seren-coordinator seren-reaper; do
    zip="$CARGO_TARGET_DIR/lambda/$bin/bootstrap.zip"
    rm -rf "$tmp/unzip" && mkdir "$tmp/unzip"
    "$hcl2_py" -m zipfile -e "$zip" "$tmp/unzip"
    [ -f "$tmp/unzip/bootstrap" ] || { echo "$zip holds no bootstrap" >&2; exit 1; }
    ami/build-ami.sh --check-binary "$tmp/unzip/bootstrap" --arch x86_64 >/dev/null
    echo "  $bin: $(du -h "$zip" | cut -f1) zip, bootstrap is a Linux x86_64 executable for provided.al2023"
done
echo "packaging checks passed"

#!/usr/bin/env bash
# Put the postgres-seren-replicator control plane into an AWS account: build both Lambdas,
# build (or reuse) the worker AMI, terraform apply infra/, then smoke-test the endpoint with the
# API key. Safe to rerun: the build is incremental, an AMI built from the same commit is reused,
# and terraform only changes what differs.
#
#   ./deploy.sh [--dry-run] [--region R] [--arch x86_64|arm64] [--ami-id ami-…] [--rebuild-ami]
#               [--name-prefix P] [--yes] [--skip-smoke-test]
#
#   --dry-run          print every step, touch nothing (no AWS credentials needed)
#   --region R         AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)
#   --arch A           Lambdas' and workers' architecture (default x86_64; arm64 costs less but
#                      needs `rustup target add aarch64-unknown-linux-gnu`)
#   --ami-id ID        use this worker AMI instead of building or looking one up
#   --rebuild-ami      build a new AMI even if one from this commit exists
#   --name-prefix P    Terraform's name_prefix (default seren)
#   --yes              terraform apply without asking
#   --skip-smoke-test  do not call the endpoint afterwards
#
# Extra Terraform settings go in infra/terraform.tfvars (see infra/terraform.tfvars.example).
set -euo pipefail

root="$(cd "$(dirname "$0")" && pwd)"
infra="$root/infra"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

dry_run=false
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
arch="x86_64"
ami_id=""
rebuild_ami=false
name_prefix="seren"
auto_approve=false
smoke=true

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf 'deploy.sh: %s\n' "$*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=true; shift ;;
        --region) region="${2:?--region needs a region}"; shift 2 ;;
        --arch) arch="${2:?--arch needs x86_64 or arm64}"; shift 2 ;;
        --ami-id) ami_id="${2:?--ami-id needs an AMI id}"; shift 2 ;;
        --rebuild-ami) rebuild_ami=true; shift ;;
        --name-prefix) name_prefix="${2:?--name-prefix needs a value}"; shift 2 ;;
        --yes | -y) auto_approve=true; shift ;;
        --skip-smoke-test) smoke=false; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$arch" in
    x86_64) lambda_flag="--x86-64"; triple="x86_64-unknown-linux-gnu" ;;
    arm64) lambda_flag="--arm64"; triple="aarch64-unknown-linux-gnu" ;;
    *) die "--arch must be x86_64 or arm64, not $arch" ;;
esac
if [ -n "$ami_id" ] && ! [[ "$ami_id" =~ ^ami-[0-9a-f]{8,17}$ ]]; then
    die "--ami-id must look like ami-0123456789abcdef0, not $ami_id"
fi

# Run a step, or in a dry run print it.
run() {
    if $dry_run; then
        printf '[dry-run] %s\n' "$*"
    else
        "$@"
    fi
}

# ------------------------------------------------------------------ prerequisites
# Each missing tool stops a real run with what to do; a dry run lists them and goes on.
missing=0
# The probe is a fixed shell snippet from this file (never a value from outside), run by bash -c.
need() {
    local what="$1" ok="$2" fix="$3"
    if bash -c "$ok" >/dev/null 2>&1; then
        printf '  ok       %s\n' "$what"
    elif $dry_run; then
        printf '  missing  %s: %s\n' "$what" "$fix"
        missing=$((missing + 1))
    else
        die "$what is missing: $fix"
    fi
}

step "prerequisites"
need "cargo (Rust toolchain)" "command -v cargo" "install Rust from https://rustup.rs"
need "Rust target $triple" "! command -v rustup || rustup target list --installed | grep -qx $triple" \
    "rustup target add $triple"
need "cargo-lambda" "command -v cargo-lambda" "pip install cargo-lambda (it brings zig for the cross build)"
need "terraform >= 1.5" \
    "terraform version -json | grep -Eq '\"terraform_version\": *\"(1\\.([5-9]|[1-9][0-9])|[2-9])'" \
    "install Terraform 1.5 or newer: https://developer.hashicorp.com/terraform/install"
if [ -z "$ami_id" ]; then
    need "packer" "command -v packer" "install Packer (https://developer.hashicorp.com/packer/install), or pass --ami-id"
fi
need "aws CLI" "command -v aws" "install AWS CLI v2: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
need "curl" "command -v curl" "install curl"
need "AWS credentials" "aws sts get-caller-identity --region $region" \
    "configure credentials (aws configure, AWS_PROFILE or SSO) for the account to deploy into"
if $dry_run && [ "$missing" -gt 0 ]; then
    printf '  (%d missing: a real run would stop at the first)\n' "$missing"
fi

# ------------------------------------------------------------------ build
step "build the Lambdas ($arch): seren-coordinator, seren-reaper"
coordinator_zip="$target_dir/lambda/seren-coordinator/bootstrap.zip"
reaper_zip="$target_dir/lambda/seren-reaper/bootstrap.zip"
(cd "$root" && run cargo lambda build --profile dist "$lambda_flag" \
    --bin seren-coordinator --bin seren-reaper --output-format zip)
if ! $dry_run; then
    for z in "$coordinator_zip" "$reaper_zip"; do
        [ -s "$z" ] || die "the build made no $z"
    done
fi
printf '  %s\n  %s\n' "$coordinator_zip" "$reaper_zip"

# ------------------------------------------------------------------ worker AMI
step "worker AMI ($arch)"
commit="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ -z "$ami_id" ] && ! $rebuild_ami; then
    if $dry_run; then
        printf '[dry-run] aws ec2 describe-images --owners self --filters Name=name,Values=postgres-seren-replicator-worker-%s-* Name=tag:SourceCommit,Values=%s\n' "$arch" "$commit"
    else
        found="$(aws ec2 describe-images --region "$region" --owners self \
            --filters "Name=name,Values=postgres-seren-replicator-worker-$arch-*" \
            "Name=tag:SourceCommit,Values=$commit" "Name=state,Values=available" \
            --query 'sort_by(Images,&CreationDate)[-1].ImageId' --output text)"
        if [[ "$found" =~ ^ami- ]]; then
            ami_id="$found"
            echo "  reusing $ami_id, built from this commit ($commit)"
        fi
    fi
fi
if [ -z "$ami_id" ]; then
    build_args=(--arch "$arch" --region "$region" --log-group "/$name_prefix-replication/workers"
        --source-commit "$commit")
    if $dry_run; then
        "$root/ami/build-ami.sh" "${build_args[@]}" --dry-run | sed 's/^/  /'
        ami_id="ami-dryrun0000000000"
    else
        ami_id="$("$root/ami/build-ami.sh" "${build_args[@]}" | tail -n1)"
        [[ "$ami_id" =~ ^ami- ]] || die "ami/build-ami.sh printed no AMI id"
    fi
fi
echo "  worker_ami_id = $ami_id"

# ------------------------------------------------------------------ terraform
step "terraform apply (infra/, region $region)"
tf_vars=(-var "aws_region=$region" -var "worker_ami_id=$ami_id" -var "lambda_architecture=$arch"
    -var "coordinator_zip=$coordinator_zip" -var "reaper_zip=$reaper_zip" -var "name_prefix=$name_prefix")
apply_flags=(-input=false)
$auto_approve && apply_flags+=(-auto-approve)
run terraform -chdir="$infra" init -input=false
run terraform -chdir="$infra" apply "${apply_flags[@]}" "${tf_vars[@]}"

# ------------------------------------------------------------------ smoke test
if $smoke; then
    step "smoke test: GET /health, then GET /jobs with the API key"
    if $dry_run; then
        echo "[dry-run] endpoint=\$(terraform -chdir=infra output -raw api_endpoint)"
        echo "[dry-run] key from SSM (aws ssm get-parameter --with-decryption), sent from a header file, never printed"
        echo "[dry-run] curl \$endpoint/health; curl -H @headers \$endpoint/jobs"
    else
        endpoint="$(terraform -chdir="$infra" output -raw api_endpoint)"
        endpoint="${endpoint%/}"
        key_param="$(terraform -chdir="$infra" output -raw api_key_parameter)"
        headers="$(mktemp)"
        trap 'rm -f "$headers"' EXIT
        chmod 600 "$headers"
        # The key goes from SSM into a 0600 header file; it never reaches argv or the output.
        # No eval of anything Terraform printed: the parameter name is passed as one argument.
        printf 'x-api-key: %s\n' "$(aws ssm get-parameter --region "$region" --name "$key_param" \
            --with-decryption --query Parameter.Value --output text)" >"$headers"
        ok=false
        # A fresh API and Lambda can take a few seconds to answer.
        for attempt in 1 2 3 4 5 6; do
            health="$(curl -fsS --max-time 15 "$endpoint/health" 2>/dev/null || true)"
            status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 15 -H @"$headers" "$endpoint/jobs" || true)"
            if [ -n "$health" ] && [ "$status" = 200 ]; then
                ok=true
                break
            fi
            echo "  not ready (health: ${health:-no answer}, /jobs: $status); attempt $attempt of 6"
            sleep 10
        done
        $ok || die "the endpoint $endpoint does not answer as it should; see: aws logs tail /aws/lambda/seren-replication-coordinator --region $region"
        echo "  /health: $health"
        echo "  /jobs with the key: 200"
    fi
fi

step "done"
if $dry_run; then
    echo "dry run: nothing was built, created or changed."
else
    cat <<EOF
export SEREN_REMOTE_API=$(terraform -chdir="$infra" output -raw api_endpoint)
export SEREN_API_KEY=\$($(terraform -chdir="$infra" output -raw api_key_command))
postgres-seren-replicator init --remote --source postgresql://… --target postgresql://… --yes
EOF
fi

#!/usr/bin/env bash
# Build the worker AMI: a seren-worker binary for the AMI's architecture (cross-built with
# cargo-lambda's zig toolchain against Amazon Linux 2023's glibc, from any host), checked, then
# baked by Packer. Prints the AMI id on the last line of standard output.
#
#   ami/build-ami.sh [--arch x86_64|arm64] [--region R] [--pg-major N|newest] [--binary PATH]
#                    [--log-group NAME] [--subnet-id ID] [--source-commit SHA] [--dry-run]
#   ami/build-ami.sh --check-binary PATH --arch ARCH     only check a binary's format
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

arch="x86_64"
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
pg_major="newest"
binary=""
log_group="/seren-replication/workers"
subnet_id=""
source_commit="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
dry_run=false
check_only=""
# Amazon Linux 2023's glibc: a binary needing a newer one does not start there.
max_glibc="2.34"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf 'build-ami.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="${2:?--arch needs x86_64 or arm64}"; shift 2 ;;
        --region) region="${2:?--region needs a region}"; shift 2 ;;
        --pg-major) pg_major="${2:?--pg-major needs a major (e.g. 17) or newest}"; shift 2 ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --log-group) log_group="${2:?--log-group needs a name}"; shift 2 ;;
        --subnet-id) subnet_id="${2:?--subnet-id needs an id}"; shift 2 ;;
        --source-commit) source_commit="${2:?--source-commit needs a commit}"; shift 2 ;;
        --dry-run) dry_run=true; shift ;;
        --check-binary) check_only="${2:?--check-binary needs a path}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$arch" in
    x86_64 | arm64) ;;
    *) die "--arch must be x86_64 or arm64, not $arch" ;;
esac
# pg_dump N dumps sources up to N; the worker refuses older ones than 12, so does this.
if [ "$pg_major" != newest ] && ! { [[ "$pg_major" =~ ^[0-9]+$ ]] && [ "$pg_major" -ge 12 ]; }; then
    die "--pg-major must be a PostgreSQL major of 12 or newer (e.g. 17) or newest, not $pg_major"
fi

# The ELF header's class, byte order and machine: "x86_64", "arm64" or what it is instead.
elf_arch() {
    local f="$1" magic class data machine
    magic="$(od -An -tx1 -N4 "$f" | tr -d ' \n')"
    [ "$magic" = "7f454c46" ] || { echo "not-elf"; return; }
    class="$(od -An -tu1 -j4 -N1 "$f" | tr -d ' ')"
    data="$(od -An -tu1 -j5 -N1 "$f" | tr -d ' ')"
    [ "$class" = 2 ] || { echo "elf32"; return; }
    [ "$data" = 1 ] || { echo "big-endian"; return; }
    machine="$(od -An -tu2 -j18 -N2 "$f" | tr -d ' ')"
    case "$machine" in
        62) echo "x86_64" ;;
        183) echo "arm64" ;;
        *) echo "elf-machine-$machine" ;;
    esac
}

# Refuse a binary the AMI cannot run: wrong format or architecture, or a newer glibc.
check_binary() {
    local f="$1" want="$2" got need
    [ -f "$f" ] || die "no binary at $f"
    got="$(elf_arch "$f")"
    [ "$got" = "$want" ] || die "$f is $got, not a Linux $want executable; build it with --arch $want"
    need="$( (grep -aoE 'GLIBC_2\.[0-9]+' "$f" || true) | sort -t. -k2,2n -u | tail -n1 | sed 's/GLIBC_//')"
    if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$max_glibc" | sort -t. -k2,2n | tail -n1)" != "$max_glibc" ]; then
        die "$f needs glibc $need but Amazon Linux 2023 has $max_glibc; build it with cargo lambda (zig) as this script does"
    fi
    echo "binary ok: $f is a Linux $want executable${need:+ needing glibc $need (AMI has $max_glibc)}"
}

if [ -n "$check_only" ]; then
    check_binary "$check_only" "$arch"
    exit 0
fi

run() {
    if $dry_run; then
        printf '[dry-run] %s\n' "$*"
    else
        "$@"
    fi
}

if [ -z "$binary" ]; then
    lambda_arch="--x86-64"
    [ "$arch" = arm64 ] && lambda_arch="--arm64"
    binary="${CARGO_TARGET_DIR:-$root/target}/lambda/seren-worker/bootstrap"
    triple="x86_64-unknown-linux-gnu"
    [ "$arch" = arm64 ] && triple="aarch64-unknown-linux-gnu"
    if ! $dry_run && command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$triple"; then
        die "the Rust target $triple is not installed: rustup target add $triple"
    fi
    if ! $dry_run; then
        command -v cargo-lambda >/dev/null 2>&1 ||
            die "cargo-lambda is missing: pip install cargo-lambda (it brings zig), or pass --binary PATH"
    fi
    echo "== build seren-worker for $arch (glibc <= $max_glibc)"
    (cd "$root" && run cargo lambda build --profile dist --bin seren-worker "$lambda_arch")
fi

if $dry_run; then
    echo "[dry-run] check $binary is a Linux $arch executable needing glibc <= $max_glibc"
else
    check_binary "$binary" "$arch"
    command -v packer >/dev/null 2>&1 || die "packer is missing: https://developer.hashicorp.com/packer/install"
    if [ "$pg_major" = newest ]; then
        command -v aws >/dev/null 2>&1 ||
            die "the aws CLI is missing: it tags the AMI with the client major it got; install AWS CLI v2, or pass --pg-major N"
    fi
fi

packer_major_minor() { packer version | head -n1 | sed -E 's/^Packer v([0-9]+)\.([0-9]+).*/\1 \2/'; }
if ! $dry_run; then
    read -r pmaj pmin <<<"$(packer_major_minor)"
    if [ "$pmaj" -gt 1 ] || [ "$pmin" -ge 10 ]; then
        echo "== Packer $pmaj.$pmin: install the Amazon plugin"
        packer plugins install github.com/hashicorp/amazon >/dev/null
    fi
fi

echo "== packer build ($region, $arch, PostgreSQL client: $pg_major)"
vars=(-var "region=$region" -var "arch=$arch" -var "binary_path=$binary" -var "pg_major=$pg_major"
    -var "worker_log_group=$log_group" -var "source_commit=$source_commit")
[ -n "$subnet_id" ] && vars+=(-var "subnet_id=$subnet_id")
if $dry_run; then
    printf '[dry-run] packer build -machine-readable %s %s\n' "${vars[*]}" "$here/worker.pkr.hcl"
    echo "ami-dryrun0000000000"
    exit 0
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
packer build -machine-readable "${vars[@]}" "$here/worker.pkr.hcl" | tee "$log" |
    awk -F, '$3 == "ui" { print $5 }' | sed 's/%!(PACKER_COMMA)/,/g'
ami="$(awk -F, '$3 == "artifact" && $5 == "id" { print $6 }' "$log" | sed 's/%!(PACKER_COMMA)/,/g' |
    tr ',' '\n' | sed -n 's/^[a-z0-9-]*:\(ami-[0-9a-f]*\)$/\1/p' | head -n1)"
[ -n "$ami" ] || die "packer finished without an AMI id; see the output above"
# The major setup-worker.sh installed; with newest, only the build instance knew it beforehand.
got_major="$(grep -oE 'PostgreSQL client major: [0-9]+' "$log" | tail -n1 | grep -oE '[0-9]+$' || true)"
[ -n "$got_major" ] || die "the build of $ami did not say which PostgreSQL client it installed; see the output above"
if [ "$pg_major" = newest ]; then
    aws ec2 create-tags --region "$region" --resources "$ami" --tags "Key=PgClient,Value=$got_major" ||
        die "cannot tag $ami with PgClient=$got_major; tag it by hand (aws ec2 create-tags)"
fi
echo "== $ami has the PostgreSQL $got_major client: its workers copy sources of PostgreSQL 12 to $got_major" >&2
echo "$ami"

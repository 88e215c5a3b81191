#!/usr/bin/env bash
# Runs on the Packer build instance (Amazon Linux 2023) as root: installs the PostgreSQL client
# tools, seren-worker, its systemd unit and the CloudWatch agent's configuration. The files it
# installs were copied to /tmp by ami/worker.pkr.hcl.
set -euo pipefail

# "newest": the newest postgresqlNN package this image's repositories offer (pg_dump N dumps
# every source major up to N, so the newest copies the most sources); or a major, e.g. 17.
PG_MAJOR="${PG_MAJOR:-newest}"
WORKER_LOG_GROUP="${WORKER_LOG_GROUP:-/seren-replication/workers}"
EXPECTED_ARCH="${EXPECTED_ARCH:-}"

say() { printf '== %s\n' "$*"; }
die() { printf 'setup-worker.sh: %s\n' "$*" >&2; exit 1; }

# The highest N of the client packages named postgresqlN in `dnf list` output on standard input
# (lines like "postgresql17.x86_64   17.6-1.amzn2023.0.1   amazonlinux"; the -server, -contrib
# and other subpackages, the headers and installed markers do not count).
newest_major() { sed -nE 's/^postgresql([0-9]+)\.[A-Za-z0-9_]+[[:space:]].*/\1/p' | sort -n | tail -n1; }
if [ "${1:-}" = "--newest-major" ]; then
    newest_major
    exit 0
fi

machine="$(uname -m)"
case "$EXPECTED_ARCH:$machine" in
    x86_64:x86_64 | arm64:aarch64 | :*) ;;
    *) die "this build instance is $machine but the AMI is for $EXPECTED_ARCH" ;;
esac

dnf -y -q upgrade --refresh
if [ "$PG_MAJOR" = newest ]; then
    PG_MAJOR="$(dnf -q list 'postgresql[0-9]*' 2>/dev/null | newest_major)"
    [ -n "$PG_MAJOR" ] || die "this image's repositories offer no postgresqlN package (dnf list 'postgresql[0-9]*' lists none); pass -var pg_major=N"
fi
[[ "$PG_MAJOR" =~ ^[0-9]+$ ]] || die "PG_MAJOR must be a PostgreSQL major (e.g. 17) or newest, not $PG_MAJOR"
# build-ami.sh reads this line to tag the AMI with the client major it got (PgClient).
say "PostgreSQL client major: ${PG_MAJOR}"
say "packages: postgresql${PG_MAJOR} client, CloudWatch agent"
if ! dnf -y -q install "postgresql${PG_MAJOR}"; then
    die "Amazon Linux 2023 has no postgresql${PG_MAJOR} package here; pass -var pg_major=N with one it has (dnf list 'postgresql[0-9]*'), or newest"
fi
dnf -y -q install amazon-cloudwatch-agent
dnf clean all

have_major="$(pg_dump --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/')"
[ "$have_major" = "$PG_MAJOR" ] || die "pg_dump reports major $have_major, expected $PG_MAJOR"
psql --version >/dev/null

say "seren-worker"
install -m 0755 -o root -g root /tmp/seren-worker /usr/local/bin/seren-worker
# It must run here: a binary linked against a newer glibc than this image's fails now, not
# when the first job starts.
/usr/local/bin/seren-worker --version
useradd --system --no-create-home --home-dir /nonexistent --shell /sbin/nologin seren-worker 2>/dev/null || true

say "CA bundle: the system's CAs, the RDS/Aurora CAs${EXTRA_CA_CERTS:+ and $EXTRA_CA_CERTS}"
# verify-full URLs of a job are checked against this one file, by seren-worker and by pg_dump
# (the worker user has no ~/.postgresql/root.crt). The cloud database CAs are not in the web PKI.
rds_bundle=/tmp/rds-global-bundle.pem
curl -fsS --retry 3 -o "$rds_bundle" "${RDS_CA_BUNDLE_URL:-https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem}" \
    || die "cannot download the RDS CA bundle; set RDS_CA_BUNDLE_URL or build with network access"
ca_files=(/etc/pki/tls/certs/ca-bundle.crt "$rds_bundle")
if [ -n "${EXTRA_CA_CERTS:-}" ]; then
    [ -f "$EXTRA_CA_CERTS" ] || die "EXTRA_CA_CERTS=$EXTRA_CA_CERTS is not a file"
    ca_files+=("$EXTRA_CA_CERTS")
fi
install -d -m 0755 /etc/seren-worker
for f in "${ca_files[@]}"; do
    n="$(grep -c 'BEGIN CERTIFICATE' "$f" || true)"
    [ "$n" -gt 0 ] || die "$f holds no PEM certificate"
    cat "$f"
done > /etc/seren-worker/ca-bundle.pem
chmod 0644 /etc/seren-worker/ca-bundle.pem
openssl storeutl -noout -certs /etc/seren-worker/ca-bundle.pem >/dev/null \
    || die "/etc/seren-worker/ca-bundle.pem does not parse"
rm -f "$rds_bundle"

say "systemd unit (started by each instance's user data, never at boot by itself)"
install -m 0644 /tmp/seren-worker.service /etc/systemd/system/seren-worker.service
install -d -m 0755 /etc/systemd/system/seren-worker.service.d
install -m 0644 /tmp/seren-worker-logs.conf /etc/systemd/system/seren-worker.service.d/logs.conf
install -d -m 0755 /var/log/seren-worker
systemctl daemon-reload
systemd-analyze verify /etc/systemd/system/seren-worker.service

say "CloudWatch agent: worker log and boot log to ${WORKER_LOG_GROUP}"
sed "s|@WORKER_LOG_GROUP@|${WORKER_LOG_GROUP}|g" /tmp/cloudwatch-agent.json \
    > /opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json
/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 \
    -c file:/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json
systemctl enable amazon-cloudwatch-agent

say "clean up"
rm -f /tmp/extra-ca-certs.pem /tmp/seren-worker /tmp/seren-worker.service /tmp/seren-worker-logs.conf /tmp/cloudwatch-agent.json
rm -f /etc/seren-worker/job.env
# Each instance gets its own identity and logs.
cloud-init clean --logs
say "done: seren-worker $(/usr/local/bin/seren-worker --version | awk '{print $2}'), pg_dump ${have_major}"

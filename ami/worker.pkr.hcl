# The worker AMI: Amazon Linux 2023 with PostgreSQL client tools, seren-worker, its systemd
# unit, and the CloudWatch agent shipping the worker's log. Built by ami/build-ami.sh, which
# builds the binary for `arch` and checks its format before this template copies it in.
#
# Without a required_plugins block so that every Packer from 1.6 validates it; on Packer 1.10+
# build-ami.sh installs the Amazon plugin first (`packer plugins install github.com/hashicorp/amazon`).

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region the AMI is built in (and used in)."
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or arm64; the binary must match (build-ami.sh checks)."
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Build instance type; empty: t3.small for x86_64, t4g.small for arm64."
}

variable "binary_path" {
  type        = string
  description = "The seren-worker binary for arch, built against the AMI's glibc."
}

variable "pg_major" {
  type        = string
  default     = "newest"
  description = "PostgreSQL client major to install (pg_dump N copies sources up to N), or newest: the newest postgresqlN package Amazon Linux 2023 offers on the build day; build-ami.sh then tags the AMI with the major it got."
}

variable "extra_ca_certs" {
  type        = string
  default     = ""
  description = "A PEM file of further CA certificates the workers trust for verify-full (a Cloud SQL instance's server CA, a private CA); empty: the system's CAs and the RDS/Aurora CAs only."
}

variable "worker_log_group" {
  type        = string
  default     = "/seren-replication/workers"
  description = "CloudWatch log group of the workers (Terraform's worker_log_group output)."
}

variable "source_commit" {
  type        = string
  default     = "unknown"
  description = "Git commit the binary was built from (tag SourceCommit; deploy.sh reuses an AMI with the same one)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty: the default VPC's."
}

locals {
  stamp         = regex_replace(timestamp(), "[- TZ:]", "")
  instance_type = var.instance_type != "" ? var.instance_type : (var.arch == "arm64" ? "t4g.small" : "t3.small")
}

source "amazon-ebs" "worker" {
  region        = var.region
  instance_type = local.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = "ec2-user"
  ami_name      = "postgres-seren-replicator-worker-${var.arch}-${local.stamp}"

  ami_description = "postgres-seren-replicator worker (seren-worker, ${var.pg_major == "newest" ? "newest PostgreSQL" : "PostgreSQL ${var.pg_major}"} client, CloudWatch agent)"

  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-${var.arch}"
      architecture        = var.arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  tags = {
    Name         = "postgres-seren-replicator-worker"
    Application  = "postgres-seren-replicator"
    Arch         = var.arch
    PgClient     = var.pg_major
    SourceCommit = var.source_commit
  }
}

build {
  sources = ["source.amazon-ebs.worker"]

  provisioner "file" {
    source      = var.binary_path
    destination = "/tmp/seren-worker"
  }

  provisioner "file" {
    source      = "${path.root}/seren-worker.service"
    destination = "/tmp/seren-worker.service"
  }

  provisioner "file" {
    source      = "${path.root}/seren-worker-logs.conf"
    destination = "/tmp/seren-worker-logs.conf"
  }

  provisioner "file" {
    source      = "${path.root}/cloudwatch-agent.json"
    destination = "/tmp/cloudwatch-agent.json"
  }

  provisioner "file" {
    # Without extra CAs, a placeholder that setup-worker.sh never reads (EXTRA_CA_CERTS is
    # then empty); a file source works with every Packer version, `content` does not.
    source      = var.extra_ca_certs != "" ? var.extra_ca_certs : "${path.root}/no-extra-ca-certs.pem"
    destination = "/tmp/extra-ca-certs.pem"
  }

  provisioner "shell" {
    script           = "${path.root}/setup-worker.sh"
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    environment_vars = ["PG_MAJOR=${var.pg_major}", "WORKER_LOG_GROUP=${var.worker_log_group}", "EXPECTED_ARCH=${var.arch}", "EXTRA_CA_CERTS=${var.extra_ca_certs != "" ? "/tmp/extra-ca-certs.pem" : ""}"]
  }
}

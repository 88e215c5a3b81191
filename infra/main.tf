data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

data "aws_vpc" "default" {
  count   = var.vpc_id == null ? 1 : 0
  default = true
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  vpc_id     = var.vpc_id != null ? var.vpc_id : data.aws_vpc.default[0].id

  # Names users and operators already rely on.
  coordinator_name = "seren-replication-coordinator"
  reaper_name      = "${var.name_prefix}-replication-reaper"
  managed_by_tag   = "seren-replication-system"

  worker_role_name   = "${var.name_prefix}-replication-worker"
  worker_log_group   = "/${var.name_prefix}-replication/workers"
  api_log_group      = "/${var.name_prefix}-replication/api-access"
  api_key_parameter  = "/${var.name_prefix}-replication/api-key"
  launch_template_nm = "${var.name_prefix}-replication-worker"

  instance_arn_pattern = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
}

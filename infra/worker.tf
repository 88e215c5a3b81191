# What every worker instance is launched from. The coordinator adds only what is per job: the
# instance type, subnet, spot or on-demand, the tags and the user data (job id and table name).

resource "aws_security_group" "worker" {
  name        = "${var.name_prefix}-replication-worker"
  description = "postgres-seren-replicator workers: no inbound; outbound to PostgreSQL and HTTPS only"
  vpc_id      = local.vpc_id

  dynamic "egress" {
    for_each = toset(var.database_ports)
    content {
      description = "PostgreSQL source and target databases"
      protocol    = "tcp"
      from_port   = egress.value
      to_port     = egress.value
      cidr_blocks = var.database_cidr_blocks
    }
  }

  egress {
    description = "HTTPS to AWS APIs (DynamoDB, KMS, CloudWatch Logs)"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = var.https_cidr_blocks
  }
}

resource "aws_launch_template" "worker" {
  name                                 = local.launch_template_nm
  description                          = "postgres-seren-replicator worker: one job, then power off (terminate)"
  image_id                             = var.worker_ami_id
  instance_type                        = coalesce(var.worker_instance_type, "c5.2xlarge")
  instance_initiated_shutdown_behavior = "terminate"
  ebs_optimized                        = true
  update_default_version               = true
  vpc_security_group_ids               = [aws_security_group.worker.id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_type           = "gp3"
      volume_size           = var.worker_root_volume_gb
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }
}

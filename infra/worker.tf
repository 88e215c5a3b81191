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

  # With private_networking and its endpoints: to those endpoints only (network.tf).
  egress {
    description     = "HTTPS to AWS APIs (DynamoDB, KMS, CloudWatch Logs)"
    protocol        = "tcp"
    from_port       = 443
    to_port         = 443
    cidr_blocks     = local.make_endpoints ? [] : var.https_cidr_blocks
    security_groups = local.make_endpoints ? [aws_security_group.endpoints[0].id] : []
    prefix_list_ids = local.make_endpoints ? [aws_vpc_endpoint.dynamodb[0].prefix_list_id] : []
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

  lifecycle {
    precondition {
      condition     = !var.private_networking || (var.vpc_id != null && length(var.subnet_ids) > 0)
      error_message = "private_networking needs vpc_id and subnet_ids: the private subnets of that VPC the workers launch in."
    }
    precondition {
      condition     = alltrue([for s in data.aws_subnet.worker : !s.map_public_ip_on_launch])
      error_message = "private_networking: a subnet in subnet_ids gives instances a public IP on launch (map_public_ip_on_launch); use private subnets."
    }
  }
}

# Private networking (private_networking = true): workers launch in private subnets without a
# public IP and reach AWS through VPC endpoints in the deployment's VPC instead of the internet:
# a gateway endpoint for DynamoDB (limited to this deployment's two tables) and interface
# endpoints for KMS (opening the job's URLs), CloudWatch Logs (the worker's log) and EC2 (the
# Lambdas' launches and terminations when they run in the VPC too, lambda_subnet_ids). The
# workers' HTTPS egress then goes to those endpoints only. With create_vpc_endpoints = false the
# VPC's own endpoints (or a NAT gateway) serve instead, and https_cidr_blocks applies.

locals {
  make_endpoints      = var.private_networking && var.create_vpc_endpoints
  endpoint_services   = ["kms", "logs", "ec2"]
  endpoint_subnet_ids = length(var.vpc_endpoint_subnet_ids) > 0 ? var.vpc_endpoint_subnet_ids : var.subnet_ids
}

# The worker subnets, read to refuse one that gives instances a public IP.
data "aws_subnet" "worker" {
  for_each = var.private_networking ? toset(var.subnet_ids) : toset([])
  id       = each.value
}

resource "aws_security_group" "endpoints" {
  count       = local.make_endpoints ? 1 : 0
  name        = "${var.name_prefix}-replication-endpoints"
  description = "postgres-seren-replicator VPC endpoints: HTTPS from the workers and the Lambdas"
  vpc_id      = local.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_workers" {
  count                        = local.make_endpoints ? 1 : 0
  security_group_id            = aws_security_group.endpoints[0].id
  description                  = "HTTPS from the workers"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.worker.id
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_lambdas" {
  for_each                     = local.make_endpoints ? toset(var.lambda_security_group_ids) : toset([])
  security_group_id            = aws_security_group.endpoints[0].id
  description                  = "HTTPS from the Lambdas in the VPC"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = each.value
}

data "aws_iam_policy_document" "dynamodb_endpoint" {
  statement {
    sid = "OnlyThisDeploymentsTables"
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"]
    resources = concat(local.table_arns, [aws_dynamodb_table.ledger.arn])
    condition {
      test     = "StringEquals"
      variable = "aws:PrincipalAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_vpc_endpoint" "dynamodb" {
  count             = local.make_endpoints ? 1 : 0
  vpc_id            = local.vpc_id
  service_name      = "com.amazonaws.${local.region}.dynamodb"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.vpc_endpoint_route_table_ids
  policy            = data.aws_iam_policy_document.dynamodb_endpoint.json

  lifecycle {
    precondition {
      condition     = length(var.vpc_endpoint_route_table_ids) > 0
      error_message = "private_networking with create_vpc_endpoints needs vpc_endpoint_route_table_ids: the route tables of the worker subnets, for the DynamoDB gateway endpoint."
    }
  }
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = local.make_endpoints ? toset(local.endpoint_services) : toset([])
  vpc_id              = local.vpc_id
  service_name        = "com.amazonaws.${local.region}.${each.value}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = local.endpoint_subnet_ids
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true
}

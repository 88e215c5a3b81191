# Three roles, each with only what its program calls (see docs/security.md):
# - the coordinator Lambda: jobs table, seal with the jobs key, grant a worker its job,
#   launch from the one launch template, pass only the worker role, terminate only our workers;
# - the reaper Lambda: jobs table, terminate only our workers, revoke workers' grants, and
#   start the next worker of a job whose worker was lost (the same launch rights as the
#   coordinator's, one shared document);
# - the worker instances: read and update job items; no EC2 and no standing KMS permission.

locals {
  table_arns = [
    aws_dynamodb_table.jobs.arn,
    "${aws_dynamodb_table.jobs.arn}/index/*",
  ]
  # What a worker's writes to a job item may touch: its status, times, progress, outcome, the
  # attempt count (a worker whose spot instance is reclaimed hands the job to the next one) and
  # the removal of the sealed URLs when the job ends; the key and both index keys, as
  # DynamoDB's attribute conditions require. Not `spec` (drop_existing, filters), `ttl`, the
  # displayed URLs, the owner's idempotency key or a cancel request. Checked against the
  # worker's real requests by crates/worker/tests/store_scope.rs.
  worker_item_attributes = [
    "job_id", "status", "owner", "created_at", "updated_at", "version", "started_at",
    "heartbeat_at", "finished_at", "instance_id", "error", "progress", "result", "attempt",
    "source_secret", "target_secret",
  ]
  # The one ledger item a worker writes (its job's finish decrements the count) and its fields.
  worker_ledger_keys       = ["active-jobs"]
  worker_ledger_attributes = ["pk", "active_jobs", "changed_at_ms"]
  launch_template_arn      = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:launch-template/${aws_launch_template.worker.id}"
  worker_session_arns      = "arn:${local.partition}:sts::${local.account_id}:assumed-role/${aws_iam_role.worker.name}/i-*"
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# ---------------------------------------------------------------- shared statement blocks

data "aws_iam_policy_document" "lambda_common" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/lambda/*-replication-*:*"]
  }

  statement {
    sid       = "ReadOwnEnvironment"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.platform.arn]
    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:LambdaFunctionName"
      values   = [local.coordinator_name, local.reaper_name]
    }
  }

  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  statement {
    sid = "ListOurWorkers"
    # DescribeInstances has no resource-level permissions; it only reads.
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"]
  }

  statement {
    sid       = "TerminateOnlyOurWorkers"
    actions   = ["ec2:TerminateInstances"]
    resources = [local.instance_arn_pattern]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/ManagedBy"
      values   = [local.managed_by_tag]
    }
  }

  statement {
    sid       = "RevokeWorkerGrants"
    actions   = ["kms:ListGrants", "kms:RevokeGrant"]
    resources = [aws_kms_key.jobs.arn]
  }
}

data "aws_iam_policy_document" "lambda_vpc" {
  #checkov:skip=CKV_AWS_111:Lambda's own network-interface management in a VPC (AWSLambdaVPCAccessExecutionRole's actions) has no resource-level scoping; used only with lambda_subnet_ids.
  #checkov:skip=CKV_AWS_356:Lambda's own network-interface management in a VPC (AWSLambdaVPCAccessExecutionRole's actions) has no resource-level scoping; used only with lambda_subnet_ids.
  statement {
    sid = "LambdaNetworkInterfaces"
    # Only when the Lambdas run in a VPC (lambda_subnet_ids). Describe/Create/Delete of
    # network interfaces have no resource-level scoping for Lambda's own use.
    actions = [
      "ec2:CreateNetworkInterface",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DeleteNetworkInterface",
      "ec2:AssignPrivateIpAddresses",
      "ec2:UnassignPrivateIpAddresses",
    ]
    resources = ["*"]
  }
}

# ---------------------------------------------------------------- coordinator

data "aws_iam_policy_document" "coordinator" {
  source_policy_documents = concat(
    [data.aws_iam_policy_document.lambda_common.json, data.aws_iam_policy_document.launch_workers.json],
    length(var.lambda_subnet_ids) > 0 ? [data.aws_iam_policy_document.lambda_vpc.json] : [],
  )

  statement {
    sid       = "JobsTable"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"]
    resources = local.table_arns
  }

  statement {
    sid       = "LedgerCounterAndIdempotency"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.ledger.arn]
  }

  statement {
    sid       = "SealUrlsUnderTheirJobId"
    actions   = ["kms:Encrypt"]
    resources = [aws_kms_key.jobs.arn]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "kms:EncryptionContextKeys"
      values   = ["job_id", "field"]
    }
    condition {
      test     = "Null"
      variable = "kms:EncryptionContextKeys"
      values   = ["false"]
    }
  }
}

# What starting a worker takes: the coordinator starts a job's first worker, the reaper the next
# one of a job whose worker was lost. Shared, so that the two cannot drift apart.
data "aws_iam_policy_document" "launch_workers" {
  statement {
    sid       = "GrantAWorkerInstanceDecryptOfItsJobOnly"
    actions   = ["kms:CreateGrant"]
    resources = [aws_kms_key.jobs.arn]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "kms:GrantOperations"
      values   = ["Decrypt"]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:GrantConstraintType"
      values   = ["EncryptionContextSubset"]
    }
    condition {
      test     = "StringLike"
      variable = "kms:GranteePrincipal"
      values   = [local.worker_session_arns]
    }
  }

  statement {
    sid       = "LaunchOnlyFromOurTemplate"
    actions   = ["ec2:RunInstances"]
    resources = [local.launch_template_arn]
  }

  # The instance itself: through our template and only as an allowed type (a key cannot ask
  # for a p5.48xlarge even if the API's own check were bypassed).
  statement {
    sid       = "LaunchOnlyAllowedInstanceTypes"
    actions   = ["ec2:RunInstances"]
    resources = [local.instance_arn_pattern]
    condition {
      test     = "ArnLike"
      variable = "ec2:LaunchTemplate"
      values   = [local.launch_template_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "ec2:InstanceType"
      values   = var.allowed_instance_types
    }
  }

  # What the launch uses: this deployment's image and security group, its subnets when given
  # (the default VPC's otherwise), new volumes, interfaces and spot requests.
  statement {
    sid     = "LaunchResourcesOnlyThroughOurTemplate"
    actions = ["ec2:RunInstances"]
    resources = concat(
      [
        "arn:${local.partition}:ec2:${local.region}:${local.account_id}:volume/*",
        "arn:${local.partition}:ec2:${local.region}:${local.account_id}:network-interface/*",
        aws_security_group.worker.arn,
        "arn:${local.partition}:ec2:${local.region}::image/${var.worker_ami_id}",
        "arn:${local.partition}:ec2:${local.region}:${local.account_id}:spot-instances-request/*",
      ],
      length(var.subnet_ids) > 0
      ? [for s in var.subnet_ids : "arn:${local.partition}:ec2:${local.region}:${local.account_id}:subnet/${s}"]
      : ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:subnet/*"],
    )
    condition {
      test     = "ArnLike"
      variable = "ec2:LaunchTemplate"
      values   = [local.launch_template_arn]
    }
  }

  statement {
    sid       = "TagOnlyWorkersAsTheyLaunch"
    actions   = ["ec2:CreateTags"]
    resources = [local.instance_arn_pattern, "arn:${local.partition}:ec2:${local.region}:${local.account_id}:volume/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/ManagedBy"
      values   = [local.managed_by_tag]
    }
  }

  statement {
    sid       = "PassOnlyTheWorkerRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.worker.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = var.use_spot ? [1] : []
    content {
      sid       = "SpotServiceLinkedRoleOnce"
      actions   = ["iam:CreateServiceLinkedRole"]
      resources = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot"]
      condition {
        test     = "StringEquals"
        variable = "iam:AWSServiceName"
        values   = ["spot.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "coordinator" {
  name               = "${var.name_prefix}-replication-coordinator"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "coordinator" {
  name   = "coordinator"
  role   = aws_iam_role.coordinator.id
  policy = data.aws_iam_policy_document.coordinator.json
}

# ---------------------------------------------------------------- reaper

data "aws_iam_policy_document" "reaper" {
  source_policy_documents = concat(
    [data.aws_iam_policy_document.lambda_common.json, data.aws_iam_policy_document.launch_workers.json],
    length(var.lambda_subnet_ids) > 0 ? [data.aws_iam_policy_document.lambda_vpc.json] : [],
  )

  statement {
    sid       = "JobsTable"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"]
    resources = local.table_arns
  }

  statement {
    sid       = "LedgerCounter"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.ledger.arn]
  }
}

resource "aws_iam_role" "reaper" {
  name               = "${var.name_prefix}-replication-reaper"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "reaper" {
  name   = "reaper"
  role   = aws_iam_role.reaper.id
  policy = data.aws_iam_policy_document.reaper.json
}

# ---------------------------------------------------------------- worker instances

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid = "ReadJobItems"
    # No Query, Scan, Put or Delete; no index.
    actions   = ["dynamodb:GetItem"]
    resources = [aws_dynamodb_table.jobs.arn]
  }

  statement {
    sid = "UpdateJobProgressAndOutcome"
    # Claim, heartbeat, finish: only the attributes a worker owns.
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.jobs.arn]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:Attributes"
      values   = local.worker_item_attributes
    }
  }

  statement {
    sid = "DecrementActiveJobCount"
    # A job's finish and the count move in one transaction.
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.ledger.arn]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:LeadingKeys"
      values   = local.worker_ledger_keys
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:Attributes"
      values   = local.worker_ledger_attributes
    }
  }

  statement {
    sid       = "ShipOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.workers.arn}:*"]
  }
  # No kms: statement: each instance gets a grant for its own job's URLs from the coordinator.
  # No ec2: statement: a worker ends itself by powering off.
}

resource "aws_iam_role" "worker" {
  name               = local.worker_role_name
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "worker" {
  name   = "worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_instance_profile" "worker" {
  name = local.worker_role_name
  role = aws_iam_role.worker.name
}

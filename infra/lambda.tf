# Both Lambdas are Rust binaries built by cargo-lambda (`bootstrap` in a zip) for the
# provided.al2023 runtime. Their environment names are exactly what the binaries read
# (crates/coordinator/src/config.rs); crates/coordinator/tests/terraform_env.rs checks it.

locals {
  # Settings both binaries read: the store, the sealing key, the provisioner, the reaper policy.
  common_env = merge(
    {
      SEREN_JOBS_TABLE                = aws_dynamodb_table.jobs.name
      SEREN_KMS_KEY_ID                = aws_kms_key.jobs.arn
      SEREN_PROVISIONER               = "ec2"
      SEREN_LAUNCH_TEMPLATE           = aws_launch_template.worker.id
      SEREN_LAUNCH_TEMPLATE_VERSION   = "$Default"
      SEREN_WORKER_ROLE_ARN           = aws_iam_role.worker.arn
      SEREN_USE_SPOT                  = tostring(var.use_spot)
      SEREN_HEARTBEAT_TIMEOUT_SECS    = tostring(var.heartbeat_timeout_secs)
      SEREN_PROVISIONING_TIMEOUT_SECS = tostring(var.provisioning_timeout_secs)
      SEREN_DEFAULT_JOB_TIMEOUT_SECS  = tostring(var.default_job_timeout_secs)
      RUST_LOG                        = "info"
    },
    length(var.subnet_ids) > 0 ? { SEREN_SUBNET_IDS = join(",", var.subnet_ids) } : {},
    var.worker_instance_type != null ? { SEREN_WORKER_INSTANCE_TYPE = var.worker_instance_type } : {},
  )

  coordinator_env = merge(local.common_env, {
    SEREN_API_KEY_SHA256         = local.api_key_sha256
    SEREN_MAX_CONCURRENT_JOBS    = tostring(var.max_concurrent_jobs)
    SEREN_ALLOWED_INSTANCE_TYPES = join(",", var.allowed_instance_types)
    SEREN_JOB_RETENTION_DAYS     = tostring(var.job_retention_days)
    SEREN_ESTIMATE_MB_PER_SEC    = tostring(var.estimate_mb_per_sec)
  })

  reaper_env = local.common_env
}

resource "aws_lambda_function" "coordinator" {
  #checkov:skip=CKV_AWS_115:Concurrency is bounded by the API stage's throttling (api_throttle_rate/burst); reserving concurrency fails on accounts at the minimum unreserved quota.
  #checkov:skip=CKV_AWS_116:Invoked synchronously by API Gateway only; a failed request is answered with an error, there is nothing to redrive.
  #checkov:skip=CKV_AWS_117:Runs in a VPC when lambda_subnet_ids is given; by default it needs only AWS APIs and no VPC.
  #checkov:skip=CKV_AWS_272:The zip is built by the operator from this repository with cargo-lambda; code signing is left to operators who run a signing profile.
  function_name    = local.coordinator_name
  description      = "postgres-seren-replicator HTTP API: submit, list, show and cancel jobs"
  role             = aws_iam_role.coordinator.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = var.coordinator_zip
  source_code_hash = filebase64sha256(var.coordinator_zip)
  memory_size      = 256
  timeout          = 29
  kms_key_arn      = aws_kms_key.platform.arn

  environment {
    variables = local.coordinator_env
  }

  tracing_config {
    mode = "Active"
  }

  dynamic "vpc_config" {
    for_each = length(var.lambda_subnet_ids) > 0 ? [1] : []
    content {
      subnet_ids         = var.lambda_subnet_ids
      security_group_ids = var.lambda_security_group_ids
    }
  }

  depends_on = [aws_cloudwatch_log_group.coordinator, aws_iam_role_policy.coordinator]

  lifecycle {
    # The IAM condition ec2:InstanceType launches only allowed types: whatever the coordinator
    # picks by itself must be one of them (checked in plan, before anything is made).
    precondition {
      condition     = var.worker_instance_type == null || contains(var.allowed_instance_types, coalesce(var.worker_instance_type, "-"))
      error_message = "worker_instance_type must be one of allowed_instance_types."
    }
    precondition {
      condition     = var.worker_instance_type != null || length(setsubtract(["t3.medium", "c5.xlarge", "c5.2xlarge", "c5.4xlarge"], var.allowed_instance_types)) == 0
      error_message = "Without worker_instance_type the size-based choice picks t3.medium, c5.xlarge, c5.2xlarge or c5.4xlarge: keep them in allowed_instance_types, or set worker_instance_type."
    }
  }
}

resource "aws_lambda_function" "reaper" {
  #checkov:skip=CKV_AWS_115:Invoked once per schedule tick; two passes at once are safe (every change is conditional), so no reservation is needed.
  #checkov:skip=CKV_AWS_116:A failed pass is repeated by the next scheduled one; there is nothing to redrive.
  #checkov:skip=CKV_AWS_117:Runs in a VPC when lambda_subnet_ids is given; by default it needs only AWS APIs and no VPC.
  #checkov:skip=CKV_AWS_272:The zip is built by the operator from this repository with cargo-lambda; code signing is left to operators who run a signing profile.
  function_name    = local.reaper_name
  description      = "postgres-seren-replicator reaper: fails stale jobs, terminates orphaned workers, revokes their grants"
  role             = aws_iam_role.reaper.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = var.reaper_zip
  source_code_hash = filebase64sha256(var.reaper_zip)
  memory_size      = 256
  timeout          = 120
  kms_key_arn      = aws_kms_key.platform.arn

  environment {
    variables = local.reaper_env
  }

  tracing_config {
    mode = "Active"
  }

  dynamic "vpc_config" {
    for_each = length(var.lambda_subnet_ids) > 0 ? [1] : []
    content {
      subnet_ids         = var.lambda_subnet_ids
      security_group_ids = var.lambda_security_group_ids
    }
  }

  depends_on = [aws_cloudwatch_log_group.reaper, aws_iam_role_policy.reaper]
}

resource "aws_cloudwatch_event_rule" "reaper" {
  name                = local.reaper_name
  description         = "Run the postgres-seren-replicator reaper"
  schedule_expression = var.reaper_schedule
}

resource "aws_cloudwatch_event_target" "reaper" {
  rule = aws_cloudwatch_event_rule.reaper.name
  arn  = aws_lambda_function.reaper.arn
}

resource "aws_lambda_permission" "reaper_schedule" {
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.reaper.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.reaper.arn
}

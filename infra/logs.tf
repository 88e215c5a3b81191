# Log groups exist before the functions, so their retention and encryption hold from the
# first line. Retention is short on purpose: logs never hold secrets, and the outcome of every
# job is in its record for job_retention_days.

resource "aws_cloudwatch_log_group" "coordinator" {
  #checkov:skip=CKV_AWS_338:Retention is log_retention_days (7 by default) by design; job outcomes are kept in DynamoDB and logs never carry secrets.
  name              = "/aws/lambda/${local.coordinator_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.platform.arn
}

resource "aws_cloudwatch_log_group" "reaper" {
  #checkov:skip=CKV_AWS_338:Retention is log_retention_days (7 by default) by design; the reaper's decisions are recorded on the jobs.
  name              = "/aws/lambda/${local.reaper_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.platform.arn
}

resource "aws_cloudwatch_log_group" "workers" {
  #checkov:skip=CKV_AWS_338:Retention is log_retention_days (7 by default) by design; a worker's outcome and error are recorded on its job.
  name              = local.worker_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.platform.arn
}

resource "aws_cloudwatch_log_group" "api_access" {
  #checkov:skip=CKV_AWS_338:Retention is log_retention_days (7 by default) by design; access logs hold request metadata only.
  name              = local.api_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.platform.arn
}

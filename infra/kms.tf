# Two keys with separate duties:
# - `jobs` seals connection URLs, always under the encryption context {"job_id": …, "field": …}.
#   The coordinator encrypts with it and grants each worker instance Decrypt for its own job
#   only; the key policy lets no IAM policy grant Decrypt, so only those grants can.
# - `platform` encrypts the table, the log groups, the Lambdas' environment and the API key
#   parameter.

data "aws_iam_policy_document" "jobs_key" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" is this key alone; the account statement delegates to IAM, where each role's use is scoped and conditioned.
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is this key alone; the account statement delegates to IAM, where each role's use is scoped and conditioned.
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" is this key alone; the account statement delegates to IAM, where each role's use is scoped and conditioned.
  # Administration and Encrypt, never decrypting: no IAM policy (not even kms:Decrypt on "*")
  # can let a principal read a sealed URL. Only the per-instance grants the coordinator makes, each for one job's
  # encryption context, give Decrypt; grants do not need the key policy to allow it.
  statement {
    sid = "AccountAdministersTheKeyButCannotDecrypt"
    actions = [
      # Administration.
      "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
      "kms:Revoke*", "kms:Retire*", "kms:Disable*", "kms:Get*", "kms:Delete*",
      "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
      "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand",
      # Sealing (the coordinator, conditioned in its IAM policy).
      "kms:Encrypt",
    ]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "jobs" {
  description             = "postgres-seren-replicator: seals job connection URLs (context job_id)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.jobs_key.json
}

resource "aws_kms_alias" "jobs" {
  name          = "alias/${var.name_prefix}-replication-jobs"
  target_key_id = aws_kms_key.jobs.key_id
}

data "aws_iam_policy_document" "platform_key" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" is this key alone; the account statement delegates to IAM, where each role's use is scoped and conditioned.
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is this key alone; the account statement delegates to IAM, where each role's use is scoped and conditioned.
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" is this key alone; the account statement delegates to IAM, where each role's use is scoped and conditioned.
  statement {
    sid       = "AccountAdministersTheKeyThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsEncryptsOurLogGroups"
    actions = [
      "kms:Encrypt",
      "kms:Decrypt",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "platform" {
  description             = "postgres-seren-replicator: jobs table, logs, Lambda environment, API key"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.platform_key.json
}

resource "aws_kms_alias" "platform" {
  name          = "alias/${var.name_prefix}-replication-platform"
  target_key_id = aws_kms_key.platform.key_id
}

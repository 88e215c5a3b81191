# The job store. Layout and attribute names: docs/control-plane.md ("DynamoDB layout").
resource "aws_dynamodb_table" "jobs" {
  name                        = var.jobs_table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "job_id"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "job_id"
    type = "S"
  }

  attribute {
    name = "status"
    type = "S"
  }

  attribute {
    name = "owner"
    type = "S"
  }

  attribute {
    name = "created_at"
    type = "S"
  }

  # The reaper's listing of unfinished jobs by status.
  global_secondary_index {
    name            = "status-created_at-index"
    hash_key        = "status"
    range_key       = "created_at"
    projection_type = "ALL"
  }

  # GET /jobs: one key's jobs, newest first.
  global_secondary_index {
    name            = "owner-created_at-index"
    hash_key        = "owner"
    range_key       = "created_at"
    projection_type = "ALL"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.platform.arn
  }
}

# The bookkeeping beside the jobs: the active-job counter (`active-jobs`) and the idempotency
# records (`idem#<sha256>`), keyed by `pk`. Kept out of the jobs table so that a scan of it lists
# jobs only. The name is the jobs table's with "-ledger": the programs derive it, nothing
# configures it.
resource "aws_dynamodb_table" "ledger" {
  name                        = "${var.jobs_table_name}-ledger"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.platform.arn
  }
}

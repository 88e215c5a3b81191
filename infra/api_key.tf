# The API key: generated here, kept in an SSM SecureString under the platform key; the
# coordinator is given only its SHA-256. The key is also in the Terraform state: keep the state
# in an encrypted backend with restricted access.
resource "random_password" "api_key" {
  length  = 40
  special = false
}

resource "aws_ssm_parameter" "api_key" {
  name        = local.api_key_parameter
  description = "postgres-seren-replicator API key (send as Authorization: Bearer or x-api-key)"
  type        = "SecureString"
  key_id      = aws_kms_key.platform.arn
  value       = random_password.api_key.result
}

locals {
  # What `seren-coordinator hash-key` prints for the key.
  api_key_sha256 = sha256(random_password.api_key.result)
}

output "api_endpoint" {
  description = "The API's base URL: export SEREN_REMOTE_API=<this>."
  value       = aws_apigatewayv2_stage.default.invoke_url
}

output "api_key_parameter" {
  description = "SSM parameter (SecureString) holding the API key."
  value       = aws_ssm_parameter.api_key.name
}

output "api_key_command" {
  description = "Prints the API key: export SEREN_API_KEY=$(<this>)."
  value       = "aws ssm get-parameter --region ${local.region} --name ${aws_ssm_parameter.api_key.name} --with-decryption --query Parameter.Value --output text"
}

output "jobs_table" {
  description = "DynamoDB table holding jobs."
  value       = aws_dynamodb_table.jobs.name
}

output "coordinator_function" {
  description = "The coordinator Lambda."
  value       = aws_lambda_function.coordinator.function_name
}

output "reaper_function" {
  description = "The reaper Lambda."
  value       = aws_lambda_function.reaper.function_name
}

output "coordinator_log_group" {
  description = "The coordinator's log group: aws logs tail <this> --follow."
  value       = aws_cloudwatch_log_group.coordinator.name
}

output "worker_log_group" {
  description = "Workers' log group (one stream per instance id)."
  value       = aws_cloudwatch_log_group.workers.name
}

output "launch_template_id" {
  description = "Launch template the workers start from."
  value       = aws_launch_template.worker.id
}

output "worker_role_arn" {
  description = "IAM role of worker instances."
  value       = aws_iam_role.worker.arn
}

output "jobs_kms_key_arn" {
  description = "KMS key sealing connection URLs (context job_id)."
  value       = aws_kms_key.jobs.arn
}

output "worker_security_group_id" {
  description = "Workers' security group; allow it on your databases' inbound rules."
  value       = aws_security_group.worker.id
}

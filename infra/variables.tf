variable "aws_region" {
  description = "Region for every resource; workers run here, so pick the one closest to the databases."
  type        = string
  default     = "us-east-1"
}

variable "name_prefix" {
  description = "Prefix of the names of IAM roles, keys, the launch template and log groups. The table and the coordinator Lambda keep their fixed names."
  type        = string
  default     = "seren"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name_prefix))
    error_message = "name_prefix must be 2 to 21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "jobs_table_name" {
  description = "DynamoDB table holding jobs."
  type        = string
  default     = "replication-jobs"
}

variable "lambda_architecture" {
  description = "Architecture of both Lambdas: x86_64 or arm64 (about 20% cheaper per GB-second). Must match the zips; deploy.sh --arch builds them to match."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.lambda_architecture)
    error_message = "lambda_architecture must be arm64 or x86_64."
  }
}

variable "coordinator_zip" {
  description = "Path of the coordinator's Lambda zip (bootstrap inside), from `cargo lambda build --profile dist --bin seren-coordinator --output-format zip`."
  type        = string
  default     = "../target/lambda/seren-coordinator/bootstrap.zip"
}

variable "reaper_zip" {
  description = "Path of the reaper's Lambda zip (bootstrap inside), from `cargo lambda build --profile dist --bin seren-reaper --output-format zip`."
  type        = string
  default     = "../target/lambda/seren-reaper/bootstrap.zip"
}

variable "worker_ami_id" {
  description = "AMI of the workers, built by ami/build-ami.sh (named postgres-seren-replicator-worker-*)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.worker_ami_id))
    error_message = "worker_ami_id must look like ami-0123456789abcdef0; ami/build-ami.sh prints it."
  }
}

variable "worker_instance_type" {
  description = "Instance type of workers whose job asks for none. Null: chosen by the source's size (t3.medium under 10 GiB up to c5.4xlarge). Must be one of allowed_instance_types."
  type        = string
  default     = null
}

variable "allowed_instance_types" {
  description = "The only instance types workers may run as: a job asking for another gets 400, and the coordinator's IAM policy launches no other (ec2:InstanceType). Keep t3.medium, c5.xlarge, c5.2xlarge and c5.4xlarge unless worker_instance_type is set: the size-based choice picks them."
  type        = list(string)
  default = [
    "t3.medium", "t3.large", "t3.xlarge", "t3.2xlarge",
    "c5.large", "c5.xlarge", "c5.2xlarge", "c5.4xlarge",
    "c6i.large", "c6i.xlarge", "c6i.2xlarge", "c6i.4xlarge",
    "c7i.large", "c7i.xlarge", "c7i.2xlarge", "c7i.4xlarge",
    "m5.large", "m5.xlarge", "m5.2xlarge", "m5.4xlarge",
    "m6i.large", "m6i.xlarge", "m6i.2xlarge", "m6i.4xlarge",
    "m7i.large", "m7i.xlarge", "m7i.2xlarge", "m7i.4xlarge",
    "r6i.large", "r6i.xlarge", "r6i.2xlarge", "r6i.4xlarge",
  ]

  validation {
    condition     = length(var.allowed_instance_types) > 0 && alltrue([for t in var.allowed_instance_types : can(regex("^[a-z0-9-]+\\.[a-z0-9-]+$", t))])
    error_message = "allowed_instance_types must list instance types such as c5.2xlarge."
  }
}

variable "estimate_mb_per_sec" {
  description = "Copy throughput (MB of source database per second) behind the duration and cost that init --remote --dry-run estimates. The default, 60, is the slowest set of the project's benchmark on 2 cores; set what your jobs show (size / duration)."
  type        = number
  default     = 60

  validation {
    condition     = var.estimate_mb_per_sec >= 1 && var.estimate_mb_per_sec <= 100000 && floor(var.estimate_mb_per_sec) == var.estimate_mb_per_sec
    error_message = "estimate_mb_per_sec must be a whole number from 1 to 100000."
  }
}

variable "worker_root_volume_gb" {
  description = "Size of a worker's encrypted gp3 root volume. The copy streams through memory; the disk holds the OS, the binaries and logs."
  type        = number
  default     = 20

  validation {
    condition     = var.worker_root_volume_gb >= 8 && var.worker_root_volume_gb <= 1024
    error_message = "worker_root_volume_gb must be between 8 and 1024."
  }
}

variable "use_spot" {
  description = "Launch workers on spot capacity first, falling back to on-demand when spot has none (a job whose spot worker is reclaimed resumes on an on-demand one)."
  type        = bool
  default     = true
}

variable "max_concurrent_jobs" {
  description = "Unfinished jobs at most; further submits get 429 with Retry-After. 0: no limit."
  type        = number
  default     = 10

  validation {
    condition     = var.max_concurrent_jobs >= 0
    error_message = "max_concurrent_jobs must be 0 or more."
  }
}

variable "job_retention_days" {
  description = "Days a job record is kept (DynamoDB TTL) after it is created."
  type        = number
  default     = 30

  validation {
    condition     = var.job_retention_days >= 1
    error_message = "job_retention_days must be at least 1."
  }
}

variable "vpc_id" {
  description = "VPC of the workers' security group. Null: the region's default VPC."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Subnets workers launch in, tried in order when one has no capacity. Empty: the default VPC's. Private subnets need a NAT gateway or VPC endpoints (DynamoDB, KMS, CloudWatch Logs) and a route to the databases."
  type        = list(string)
  default     = []
}

variable "private_networking" {
  description = "Workers in private subnets (vpc_id and subnet_ids, none giving a public IP on launch) that reach AWS through VPC endpoints, not the internet. See create_vpc_endpoints."
  type        = bool
  default     = false
}

variable "create_vpc_endpoints" {
  description = "With private_networking: create the endpoints the workers use (DynamoDB gateway limited to this deployment's tables; KMS, CloudWatch Logs and EC2 interface endpoints) and send the workers' HTTPS only to them. False: the VPC already has them, or a NAT gateway; https_cidr_blocks applies."
  type        = bool
  default     = true
}

variable "vpc_endpoint_route_table_ids" {
  description = "With private_networking and create_vpc_endpoints: route tables of the worker subnets, for the DynamoDB gateway endpoint."
  type        = list(string)
  default     = []
}

variable "vpc_endpoint_subnet_ids" {
  description = "Subnets of the interface endpoints, one per availability zone. Empty: subnet_ids (which must then be in distinct zones)."
  type        = list(string)
  default     = []
}

variable "database_cidr_blocks" {
  description = "Where workers may connect to PostgreSQL. Narrow this to your databases' addresses."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "database_ports" {
  description = "PostgreSQL ports workers may connect to."
  type        = list(number)
  default     = [5432]
}

variable "https_cidr_blocks" {
  description = "Where workers may reach HTTPS: the AWS APIs (DynamoDB, KMS, CloudWatch Logs). With VPC endpoints of your own, narrow this to the VPC's CIDR. Not used with private_networking and create_vpc_endpoints: HTTPS then goes to the endpoints Terraform made."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "lambda_subnet_ids" {
  description = "Run both Lambdas in these subnets (they then need endpoints or NAT for DynamoDB, KMS, EC2 and CloudWatch). Empty: outside a VPC."
  type        = list(string)
  default     = []
}

variable "lambda_security_group_ids" {
  description = "Security groups of the Lambdas when lambda_subnet_ids is set."
  type        = list(string)
  default     = []
}

variable "api_throttle_rate" {
  description = "Steady requests per second the API accepts before answering 429."
  type        = number
  default     = 20
}

variable "api_throttle_burst" {
  description = "Burst of requests the API accepts."
  type        = number
  default     = 40
}

variable "reaper_schedule" {
  description = "EventBridge schedule of the reaper."
  type        = string
  default     = "rate(1 minute)"
}

variable "heartbeat_timeout_secs" {
  description = "A running job without a heartbeat for this long has failed (heartbeat_lost) and its instance is terminated."
  type        = number
  default     = 300
}

variable "provisioning_timeout_secs" {
  description = "A job whose worker has not claimed it after this long has failed (worker_never_started)."
  type        = number
  default     = 900
}

variable "default_job_timeout_secs" {
  description = "A running job that gives no timeout_seconds of its own is stopped (timed_out) after this long."
  type        = number
  default     = 86400
}

variable "log_retention_days" {
  description = "Retention of the Lambdas', workers' and API access logs."
  type        = number
  default     = 7
}

variable "deletion_protection" {
  description = "Protect the jobs table from deletion. Set false before `terraform destroy`."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

//! Configuration shared by the binaries: env-backed flags, and the adapters they select.
//!
//! Without `SEREN_JOBS_TABLE` jobs live in a SQLite file; without `SEREN_KMS_KEY_ID` URLs are
//! sealed with a local key file; `SEREN_PROVISIONER=ec2` launches instances, `local` (the
//! default) starts worker processes. AWS clients take region, credentials and
//! `AWS_ENDPOINT_URL` from the usual AWS environment.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use job_model::backends::BackendConfig;
use job_model::{JobStore, Sealer};

use crate::provision::ec2::{Ec2Config, Ec2Provisioner};
use crate::provision::grant::WorkerGrants;
use crate::provision::local::{LocalConfig, LocalProvisioner};
use crate::provision::Provisioner;
use crate::reaper::Policy;

/// Where jobs and sealing keys are.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// DynamoDB table holding jobs. When unset, jobs live in the SQLite file of --sqlite-path.
    #[arg(long, env = "SEREN_JOBS_TABLE")]
    pub jobs_table: Option<String>,
    /// SQLite file holding jobs when no DynamoDB table is given (created if missing).
    #[arg(long, env = "SEREN_SQLITE_PATH", default_value = "seren-jobs.db")]
    pub sqlite_path: PathBuf,
    /// KMS key (id, ARN or alias) sealing connection URLs. When unset, a local key file is used.
    #[arg(long, env = "SEREN_KMS_KEY_ID")]
    pub kms_key_id: Option<String>,
    /// Local sealing key file (32 bytes, mode 0600; created if missing) when no KMS key is given.
    #[arg(long, env = "SEREN_SEAL_KEY_FILE", default_value = "seren-seal.key")]
    pub seal_key_file: PathBuf,
}

/// Which kind of worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProvisionerKind {
    /// EC2 instances from a launch template.
    Ec2,
    /// Processes on this machine.
    Local,
}

/// How workers start.
#[derive(Debug, Clone, clap::Args)]
pub struct ProvisionArgs {
    /// Start workers as EC2 instances or local processes.
    #[arg(long, env = "SEREN_PROVISIONER", value_enum, default_value = "local")]
    pub provisioner: ProvisionerKind,
    /// EC2: launch template id (lt-…) or name.
    #[arg(long, env = "SEREN_LAUNCH_TEMPLATE")]
    pub launch_template: Option<String>,
    /// EC2: launch template version.
    #[arg(
        long,
        env = "SEREN_LAUNCH_TEMPLATE_VERSION",
        default_value = "$Default"
    )]
    pub launch_template_version: String,
    /// EC2: subnets to launch in, tried in order (comma separated).
    #[arg(long, env = "SEREN_SUBNET_IDS", value_delimiter = ',')]
    pub subnet_ids: Vec<String>,
    /// EC2: instance type when a job asks for none (else chosen by the source's size).
    #[arg(long, env = "SEREN_WORKER_INSTANCE_TYPE")]
    pub worker_instance_type: Option<String>,
    /// EC2: ask for spot capacity first, falling back to on-demand.
    #[arg(long, env = "SEREN_USE_SPOT")]
    pub use_spot: bool,
    /// EC2 with KMS: the workers' IAM role ARN. Each worker then gets a KMS grant to decrypt
    /// only its own job's URLs, and the role needs no kms:Decrypt of its own.
    #[arg(long, env = "SEREN_WORKER_ROLE_ARN")]
    pub worker_role_arn: Option<String>,
    /// Local: the worker program (default: seren-worker beside this binary, else on PATH).
    #[arg(long, env = "SEREN_WORKER_PROGRAM")]
    pub worker_program: Option<PathBuf>,
    /// Local: directory for each worker's log (<job_id>.log).
    #[arg(long, env = "SEREN_WORKER_LOG_DIR")]
    pub worker_log_dir: Option<PathBuf>,
}

/// When the reaper steps in.
#[derive(Debug, Clone, clap::Args)]
pub struct ReaperArgs {
    /// Seconds without a heartbeat after which a running job has failed.
    #[arg(long, env = "SEREN_HEARTBEAT_TIMEOUT_SECS", default_value_t = 300)]
    pub heartbeat_timeout_secs: u64,
    /// Seconds a job may stay provisioning before it has failed.
    #[arg(long, env = "SEREN_PROVISIONING_TIMEOUT_SECS", default_value_t = 900)]
    pub provisioning_timeout_secs: u64,
    /// Seconds a job may run when it gives no timeout of its own.
    #[arg(long, env = "SEREN_DEFAULT_JOB_TIMEOUT_SECS", default_value_t = 86_400)]
    pub default_job_timeout_secs: u64,
}

impl ReaperArgs {
    /// The policy.
    pub fn policy(&self) -> Policy {
        Policy {
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout_secs),
            provisioning_timeout: Duration::from_secs(self.provisioning_timeout_secs),
            default_job_timeout: Duration::from_secs(self.default_job_timeout_secs),
            ..Policy::default()
        }
    }
}

/// Log to stderr at `info` (or `RUST_LOG`), coloured only on a terminal. For the binaries.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Run `work` to its end on a multi-threaded runtime, mapping its outcome to an exit code
/// (the error printed as one `error:` chain). For the binaries.
pub fn run_main(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The AWS SDK configuration from the environment.
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

impl StoreArgs {
    /// As the shared backend configuration.
    pub fn backends(&self) -> BackendConfig {
        BackendConfig {
            jobs_table: self.jobs_table.clone(),
            sqlite_path: self.sqlite_path.clone(),
            kms_key_id: self.kms_key_id.clone(),
            seal_key_file: self.seal_key_file.clone(),
        }
    }
}

/// The job store and sealer the arguments select.
///
/// # Errors
/// When the SQLite file or key file cannot be opened.
pub async fn store_and_sealer(
    args: &StoreArgs,
    aws: Option<&aws_config::SdkConfig>,
) -> anyhow::Result<(Arc<dyn JobStore>, Arc<dyn Sealer>)> {
    Ok(args.backends().open(aws)?)
}

/// Whether these arguments need AWS clients.
pub fn needs_aws(store: &StoreArgs, provision: Option<&ProvisionArgs>) -> bool {
    store.backends().needs_aws() || provision.is_some_and(|p| p.provisioner == ProvisionerKind::Ec2)
}

/// The provisioner the arguments select.
///
/// # Errors
/// When EC2 is selected without a launch template or AWS configuration.
pub fn provisioner(
    args: &ProvisionArgs,
    store: &StoreArgs,
    aws: Option<&aws_config::SdkConfig>,
) -> anyhow::Result<Arc<dyn Provisioner>> {
    match args.provisioner {
        ProvisionerKind::Ec2 => {
            let template = args.launch_template.clone().context(
                "SEREN_PROVISIONER=ec2 needs SEREN_LAUNCH_TEMPLATE (a launch template id or name)",
            )?;
            let table = store
                .jobs_table
                .clone()
                .context("SEREN_PROVISIONER=ec2 needs SEREN_JOBS_TABLE: workers on EC2 read their job from DynamoDB")?;
            let cfg = aws.context("EC2 needs AWS configuration")?;
            let grants = match (&args.worker_role_arn, &store.kms_key_id) {
                (Some(role), Some(key)) => Some(WorkerGrants::new(
                    aws_sdk_kms::Client::new(cfg),
                    key.clone(),
                    role,
                )?),
                (Some(_), None) => anyhow::bail!(
                    "SEREN_WORKER_ROLE_ARN is for KMS grants: set SEREN_KMS_KEY_ID too"
                ),
                (None, _) => {
                    tracing::warn!("no SEREN_WORKER_ROLE_ARN: workers get no per-job KMS grant, so their role needs kms:Decrypt of its own");
                    None
                }
            };
            Ok(Arc::new(Ec2Provisioner::new(
                aws_sdk_ec2::Client::new(cfg),
                Ec2Config {
                    launch_template: template,
                    launch_template_version: args.launch_template_version.clone(),
                    subnet_ids: args.subnet_ids.clone(),
                    default_instance_type: args.worker_instance_type.clone(),
                    use_spot: args.use_spot,
                    jobs_table: table,
                    grants,
                },
            )))
        }
        ProvisionerKind::Local => {
            let program = args.worker_program.clone().unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("seren-worker")))
                    .filter(|p| p.exists())
                    .unwrap_or_else(|| PathBuf::from("seren-worker"))
            });
            // The worker finds the same store and key through these (paths, not secrets).
            let mut env = Vec::new();
            match &store.jobs_table {
                Some(t) => env.push(("SEREN_JOBS_TABLE".to_owned(), t.clone())),
                None => env.push((
                    "SEREN_SQLITE_PATH".to_owned(),
                    absolute(&store.sqlite_path).display().to_string(),
                )),
            }
            match &store.kms_key_id {
                Some(k) => env.push(("SEREN_KMS_KEY_ID".to_owned(), k.clone())),
                None => env.push((
                    "SEREN_SEAL_KEY_FILE".to_owned(),
                    absolute(&store.seal_key_file).display().to_string(),
                )),
            }
            Ok(Arc::new(LocalProvisioner::new(LocalConfig {
                program,
                args: Vec::new(),
                env,
                log_dir: args.worker_log_dir.clone(),
                stop_grace: Duration::from_secs(10),
            })))
        }
    }
}

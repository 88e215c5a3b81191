//! `seren-worker`: run one remote job and exit (and, on EC2, power the instance off, which the
//! launch template turns into termination). Started by the systemd unit `seren-worker.service`
//! with the job id from the user data's environment file, or by the local provisioner.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use job_model::backends::BackendConfig;
use worker::{Config, Outcome};

/// Claim a replication job, run it, report progress, record the outcome.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The job to run.
    #[arg(long, env = "SEREN_JOB_ID")]
    job_id: String,
    /// This worker's instance id. Default: from the EC2 instance metadata (IMDSv2) when
    /// --imds is given, else local-<pid>.
    #[arg(long, env = "SEREN_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Read the instance id from the EC2 instance metadata service (IMDSv2).
    #[arg(long, env = "SEREN_USE_IMDS")]
    imds: bool,
    /// Seconds between heartbeats (each also looks for a cancel request).
    #[arg(long, env = "SEREN_HEARTBEAT_SECS", default_value_t = 5)]
    heartbeat_secs: u64,
    /// DynamoDB table holding jobs; when unset, the SQLite file of --sqlite-path.
    #[arg(long, env = "SEREN_JOBS_TABLE")]
    jobs_table: Option<String>,
    /// SQLite job store when no table is given.
    #[arg(long, env = "SEREN_SQLITE_PATH", default_value = "seren-jobs.db")]
    sqlite_path: PathBuf,
    /// KMS key the URLs are sealed with; when unset, the key file of --seal-key-file.
    #[arg(long, env = "SEREN_KMS_KEY_ID")]
    kms_key_id: Option<String>,
    /// Local sealing key file when no KMS key is given.
    #[arg(long, env = "SEREN_SEAL_KEY_FILE", default_value = "seren-seal.key")]
    seal_key_file: PathBuf,
    /// Directory holding pg_dump and psql (default: the newest found).
    #[arg(long, env = "SEREN_PG_BINDIR")]
    pg_bindir: Option<PathBuf>,
    /// Fail a copy whose progress has not moved for this many seconds with `stalled` (a lock
    /// held on either server, a hung connection). 0: never.
    #[arg(long, env = "SEREN_STALL_AFTER_SECS", default_value_t = worker::DEFAULT_STALL_AFTER.as_secs())]
    stall_after_secs: u64,
    /// Seconds to keep trying to record the job's outcome when the store fails (throttling, a
    /// network blip) before giving up.
    #[arg(long, env = "SEREN_OUTCOME_DEADLINE_SECS", default_value_t = job_model::store::retry::Backoff::OUTCOME.deadline.as_secs())]
    outcome_deadline_secs: u64,
    /// CA bundle (PEM) that the job's verify-full URLs without a CA file of their own are
    /// checked against, by the driver and by pg_dump. Default: the first of
    /// /etc/seren-worker/ca-bundle.pem (built into the AMI: the system's CAs and the cloud
    /// database CAs), /etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/certs/ca-bundle.crt.
    #[arg(long, env = "SEREN_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,
    /// After recording the outcome, power the machine off (EC2 workers).
    #[arg(long, env = "SEREN_POWER_OFF")]
    power_off: bool,
    /// The command that powers the machine off.
    #[arg(
        long,
        env = "SEREN_POWER_OFF_COMMAND",
        default_value = "systemctl poweroff"
    )]
    power_off_command: String,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "SEREN_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let power_off = cli.power_off.then(|| cli.power_off_command.clone());
    let code = match runtime.block_on(run(cli)) {
        Ok(Outcome::Completed | Outcome::Cancelled | Outcome::LostClaim(_)) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(_) | Outcome::Stopped | Outcome::Interrupted | Outcome::Stalled) => {
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    if let Some(cmd) = power_off {
        tracing::info!(command = %cmd, "powering off");
        let mut parts = cmd.split_whitespace();
        if let Some(program) = parts.next() {
            if let Err(e) = std::process::Command::new(program).args(parts).status() {
                eprintln!("error: power off with `{cmd}`: {e}");
            }
        }
    }
    code
}

async fn instance_id(cli: &Cli) -> anyhow::Result<String> {
    if let Some(id) = &cli.instance_id {
        return Ok(id.clone());
    }
    if cli.imds {
        let imds = aws_config::imds::Client::builder().build();
        let id = imds
            .get("/latest/meta-data/instance-id")
            .await
            .context("read the instance id from the instance metadata service")?;
        return Ok(id.as_ref().to_owned());
    }
    Ok(format!("local-{}", std::process::id()))
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let backends = BackendConfig {
        jobs_table: cli.jobs_table.clone(),
        sqlite_path: cli.sqlite_path.clone(),
        kms_key_id: cli.kms_key_id.clone(),
        seal_key_file: cli.seal_key_file.clone(),
    };
    let aws = if backends.needs_aws() {
        Some(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await,
        )
    } else {
        None
    };
    let (store, sealer) = backends.open(aws.as_ref())?;
    let mut cfg = Config::new(cli.job_id.clone(), instance_id(&cli).await?);
    cfg.heartbeat_every = Duration::from_secs(cli.heartbeat_secs.max(1));
    cfg.pg_bindir.clone_from(&cli.pg_bindir);
    cfg.stall_after = (cli.stall_after_secs > 0).then(|| Duration::from_secs(cli.stall_after_secs));
    cfg.outcome_backoff.deadline = Duration::from_secs(cli.outcome_deadline_secs);
    if let Some(bundle) = &cli.ca_bundle {
        anyhow::ensure!(
            bundle.is_file(),
            "--ca-bundle {} is not a readable file; point it at a PEM bundle of CA certificates",
            bundle.display()
        );
        cfg.trust_store = Some(bundle.clone());
    }
    match &cfg.trust_store {
        Some(b) => tracing::info!(trust_store = %b.display(), "server certificates checked against this bundle"),
        None => tracing::warn!("no CA bundle found (--ca-bundle): verify-full connections are checked against the driver's public CAs only, and pg_dump may refuse them"),
    }
    tracing::info!(job_id = %cfg.job_id, instance_id = %cfg.instance_id, "seren-worker starting");
    let stop = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    // On EC2 the metadata service announces a spot interruption; elsewhere there is none.
    let notice = async {
        if cli.imds {
            let imds = aws_config::imds::Client::builder().build();
            worker::spot::interruption_notice(imds, worker::spot::POLL_EVERY).await
        } else {
            std::future::pending().await
        }
    };
    let outcome = worker::run_watched(store, sealer, cfg, stop, notice).await?;
    tracing::info!(?outcome, "seren-worker done");
    Ok(outcome)
}

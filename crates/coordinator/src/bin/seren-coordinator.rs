//! `seren-coordinator`: the control plane's HTTP API. In Lambda (`AWS_LAMBDA_RUNTIME_API` set)
//! it serves the Router through `lambda_http`; elsewhere it listens with axum and also runs the
//! reaper on an interval.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use coordinator::config::{self, ProvisionArgs, ReaperArgs, StoreArgs};
use coordinator::{app, ApiKeys, AppState, Settings};

/// The postgres-seren-replicator control plane API.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the SHA-256 of an API key read from standard input, for SEREN_API_KEY_SHA256.
    HashKey,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (outside Lambda).
    #[arg(long, env = "SEREN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// SHA-256 hashes (hex, comma separated) of the accepted API keys.
    #[arg(long, env = "SEREN_API_KEY_SHA256", hide_env_values = true)]
    api_key_sha256: Option<String>,
    /// Jobs that may be active at once; more submits are answered 429. 0 for no limit.
    #[arg(long, env = "SEREN_MAX_CONCURRENT_JOBS", default_value_t = 10)]
    max_concurrent_jobs: u32,
    /// Days a job record is kept (DynamoDB TTL).
    #[arg(long, env = "SEREN_JOB_RETENTION_DAYS", default_value_t = 30)]
    job_retention_days: u64,
    /// Instance types a job may ask for in options.instance_type (comma separated); the
    /// Terraform module passes its allowed_instance_types. Default: general-purpose, compute-
    /// and memory-optimised types up to 16 vCPUs.
    #[arg(long, env = "SEREN_ALLOWED_INSTANCE_TYPES", value_delimiter = ',')]
    allowed_instance_types: Vec<String>,
    /// The copy throughput, in MB (10^6 bytes) of source database per second, that a dry run's
    /// duration and cost estimate assume: the default is the slowest set of the project's
    /// benchmark on 2 cores; set your deployment's own figure from a finished job.
    #[arg(long, env = "SEREN_ESTIMATE_MB_PER_SEC", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    estimate_mb_per_sec: u64,
    /// Seconds between reaper passes in the local server (0: never).
    #[arg(long, env = "SEREN_REAP_INTERVAL_SECS", default_value_t = 60)]
    reap_interval_secs: u64,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    provision: ProvisionArgs,
    #[command(flatten)]
    reaper: ReaperArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    config::init_logging();
    if let Some(Cmd::HashKey) = cli.command {
        let mut key = String::new();
        if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
            eprintln!("error: give the API key on standard input");
            return ExitCode::from(2);
        }
        println!("{}", coordinator::hash_key(key.trim()));
        return ExitCode::SUCCESS;
    }
    config::run_main(serve(cli.serve))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let keys = ApiKeys::from_hashes(args.api_key_sha256.as_deref().unwrap_or_default())
        .map_err(anyhow::Error::msg)?;
    if args.store.jobs_table.is_some() && args.store.kms_key_id.is_none() {
        anyhow::bail!(
            "SEREN_JOBS_TABLE is set without SEREN_KMS_KEY_ID: with jobs in DynamoDB the \
             coordinator seals URLs with KMS; give the key id, ARN or alias"
        );
    }
    let aws = if config::needs_aws(&args.store, Some(&args.provision)) {
        Some(config::aws().await)
    } else {
        None
    };
    let (store, sealer) = config::store_and_sealer(&args.store, aws.as_ref()).await?;
    let provisioner = config::provisioner(&args.provision, &args.store, aws.as_ref())?;
    let state = AppState {
        store: store.clone(),
        sealer,
        provisioner: provisioner.clone(),
        keys,
        settings: Settings {
            max_concurrent_jobs: (args.max_concurrent_jobs > 0).then_some(args.max_concurrent_jobs),
            retention: Duration::from_secs(args.job_retention_days * 24 * 3600),
            allowed_instance_types: if args.allowed_instance_types.is_empty() {
                Settings::default().allowed_instance_types
            } else {
                args.allowed_instance_types.clone()
            },
            estimate_throughput_bytes_per_sec: args.estimate_mb_per_sec * 1_000_000,
            ..Settings::default()
        },
    };
    let router = app(state);
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return coordinator::lambda::run(router)
            .await
            .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"));
    }
    if args.reap_interval_secs > 0 {
        let policy = args.reaper.policy();
        let every = Duration::from_secs(args.reap_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let r = coordinator::reaper::reap(
                    &*store,
                    &*provisioner,
                    &policy,
                    job_model::Timestamp::now(),
                )
                .await;
                if r != coordinator::reaper::Report::default() {
                    tracing::info!(report = ?r, "reaper pass");
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "seren-coordinator listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serve")
}

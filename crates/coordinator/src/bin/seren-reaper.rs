//! `seren-reaper`: one reaper pass per scheduled event in Lambda (EventBridge), or one pass
//! (or a pass every `--every` seconds) from a shell.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coordinator::config::{self, ProvisionArgs, ReaperArgs, StoreArgs};
use coordinator::reaper;
use lambda_runtime::{service_fn, LambdaEvent};

/// Fail stale jobs and terminate orphaned workers.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Outside Lambda: repeat every this many seconds instead of one pass.
    #[arg(long)]
    every: Option<u64>,
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
    config::run_main(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let aws = if config::needs_aws(&cli.store, Some(&cli.provision)) {
        Some(config::aws().await)
    } else {
        None
    };
    let (store, _sealer) = config::store_and_sealer(&cli.store, aws.as_ref()).await?;
    let provisioner = config::provisioner(&cli.provision, &cli.store, aws.as_ref())?;
    let policy = cli.reaper.policy();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        let handler = service_fn(|_event: LambdaEvent<serde_json::Value>| {
            let (store, provisioner, policy) = (store.clone(), provisioner.clone(), policy.clone());
            async move {
                // Every step ran; a failed one still fails the invocation, for the alarms.
                let report =
                    reaper::reap(&*store, &*provisioner, &policy, job_model::Timestamp::now())
                        .await;
                if report.failures.is_empty() {
                    Ok(report)
                } else {
                    Err(Box::<dyn std::error::Error + Send + Sync>::from(format!(
                        "{} reaper step(s) failed: {}",
                        report.failures.len(),
                        report.failures.join("; ")
                    )))
                }
            }
        });
        return lambda_runtime::run(handler)
            .await
            .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"));
    }
    loop {
        let report =
            reaper::reap(&*store, &*provisioner, &policy, job_model::Timestamp::now()).await;
        println!("{}", serde_json::to_string(&report)?);
        match cli.every {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None if report.failures.is_empty() => return Ok(()),
            None => anyhow::bail!("{} reaper step(s) failed", report.failures.len()),
        }
    }
}

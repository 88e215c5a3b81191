//! `seren-worker`: runs one remote job. It claims the job with a conditional transition
//! `provisioning → running` carrying its instance id, opens the sealed URLs, runs the engine,
//! heartbeats progress into the job record, stops when the owner cancels, and records the
//! outcome with a machine-readable error code. A second worker for the same job loses the claim
//! and leaves the job alone.
//!
//! The store and sealer come from `job-model`, the copy from `replicator-core`; this crate joins
//! them and nothing else. It never holds AWS permissions beyond its job's table and key.

pub mod progress;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use job_model::{
    Change, Command, ErrorBody, Expect, Job, JobStatus, JobStore, Sealer, SecretString, StoreError,
    Timestamp,
};
use replicator_core::{ConnUrl, Filter, InitOptions};

use crate::progress::Tracker;

/// How this worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The job to run.
    pub job_id: String,
    /// This worker's instance id (`i-…` on EC2, `local-<pid>` on one machine).
    pub instance_id: String,
    /// How often to heartbeat (and look for a cancel request).
    pub heartbeat_every: Duration,
    /// Where `pg_dump` and `psql` are (searched when `None`).
    pub pg_bindir: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command succeeded; the job is `completed`.
    Completed,
    /// The command failed; the job is `failed` with this error.
    Failed(ErrorBody),
    /// The owner cancelled it; the job is `cancelled`.
    Cancelled,
    /// Another worker (or the reaper) got there first; the job was left as it is.
    LostClaim(JobStatus),
    /// The worker was told to stop (a signal); the job is `failed` with `worker_stopped`.
    Stopped,
}

/// What keeps the worker from running a job at all.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The job does not exist.
    #[error("job {0} does not exist")]
    NoSuchJob(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The engine's options for a job, or the error to fail it with.
fn engine_options(
    job: &Job,
    source: &str,
    target: &str,
    pg_bindir: Option<PathBuf>,
) -> Result<InitOptions, ErrorBody> {
    if job.spec.command != Command::Init {
        return Err(ErrorBody::new(
            "unsupported_command",
            format!(
                "this worker runs init only; `{}` is not available remotely yet",
                job.spec.command
            ),
        ));
    }
    let url = |side: &str, text: &str| {
        ConnUrl::parse_remote(text)
            .map_err(|e| ErrorBody::new("invalid_url", format!("{side} URL: {e}")))
    };
    let mut opts = InitOptions::new(url("source", source)?, url("target", target)?);
    let spec = &job.spec;
    opts.filter = Filter::from_args(
        &spec.filter.include_tables,
        &spec.filter.exclude_tables,
        &spec.filter.schema_only_tables,
        &spec.filter.table_filters,
    )
    .map_err(|e| ErrorBody::new(e.code(), e.to_string()))?;
    if let Some(j) = spec.options.jobs {
        opts.jobs = j as usize;
    }
    opts.drop_existing = spec.options.drop_existing;
    opts.no_owner = spec.options.no_owner;
    opts.no_privileges = spec.options.no_privileges;
    opts.pg_bindir = pg_bindir;
    Ok(opts)
}

/// Claim the job: `provisioning → running` on this instance. Returns the job, or the status
/// that made the claim fail. A job already running on this same instance (a restarted worker)
/// is taken back, and the engine resumes it.
async fn claim(
    store: &dyn JobStore,
    cfg: &Config,
) -> Result<Result<(Job, bool), JobStatus>, WorkerError> {
    let change = Change::to(JobStatus::Running, Timestamp::now()).instance(&cfg.instance_id);
    match store
        .transition(&cfg.job_id, Expect::status(JobStatus::Provisioning), change)
        .await
    {
        Ok(job) => Ok(Ok((job, false))),
        Err(StoreError::Conflict { current, .. }) => {
            let job = store
                .get(&cfg.job_id)
                .await?
                .ok_or_else(|| WorkerError::NoSuchJob(cfg.job_id.clone()))?;
            if job.status == JobStatus::Running
                && job.instance_id.as_deref() == Some(cfg.instance_id.as_str())
            {
                Ok(Ok((job, true)))
            } else {
                Ok(Err(current))
            }
        }
        Err(StoreError::NotFound(id)) => Err(WorkerError::NoSuchJob(id)),
        Err(e) => Err(e.into()),
    }
}

/// Record the final status; a conflict (the reaper or a cancel got there first) is logged,
/// not an error.
async fn finish(store: &dyn JobStore, cfg: &Config, change: Change) -> Result<(), WorkerError> {
    let to = change.to;
    match store
        .transition(&cfg.job_id, Expect::status(JobStatus::Running), change)
        .await
    {
        Ok(_) => {
            tracing::info!(job_id = %cfg.job_id, status = %to, "recorded the outcome");
            Ok(())
        }
        Err(StoreError::Conflict { current, .. }) => {
            tracing::warn!(job_id = %cfg.job_id, %current, wanted = %to, "the job changed meanwhile; its status stays");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

// One value per job, held briefly: the size of the report variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Stop {
    Done(replicator_core::Result<replicator_core::InitReport>),
    Cancel,
    Lost(JobStatus),
    Signal,
}

/// How long a worker keeps trying to open its job's URLs while the sealer says trying again
/// may help: on EC2 the worker's KMS grant is made as it boots and can take a moment to apply.
const OPEN_PATIENCE: Duration = Duration::from_secs(120);

async fn open_patiently(
    sealer: &dyn Sealer,
    job_id: &str,
    sealed: &[u8],
) -> Result<SecretString, job_model::SealError> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_secs(1);
    loop {
        match sealer.open(job_id, sealed).await {
            Err(job_model::SealError::Backend {
                message,
                retryable: true,
            }) if started.elapsed() + pause < OPEN_PATIENCE => {
                tracing::warn!(%job_id, error = %message, retry_in_secs = pause.as_secs(), "cannot open the job's URLs yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(15));
            }
            other => return other,
        }
    }
}

/// Run the job named in `cfg` to its end. `stop` resolves when the worker must stop (SIGTERM);
/// the job is then failed with `worker_stopped` unless its owner asked for a cancel.
///
/// # Errors
/// When the job does not exist or the store fails where no status can be recorded.
pub async fn run(
    store: Arc<dyn JobStore>,
    sealer: Arc<dyn Sealer>,
    cfg: Config,
    stop: impl Future<Output = ()>,
) -> Result<Outcome, WorkerError> {
    let (job, resumed) = match claim(&*store, &cfg).await? {
        Ok(claimed) => claimed,
        Err(current) => {
            tracing::warn!(job_id = %cfg.job_id, %current, "another worker has this job; leaving it");
            return Ok(Outcome::LostClaim(current));
        }
    };
    tracing::info!(job_id = %job.job_id, instance_id = %cfg.instance_id, resumed, "claimed the job");

    let opened = async {
        let s = open_patiently(&*sealer, &job.job_id, &job.source_secret).await?;
        let t = open_patiently(&*sealer, &job.job_id, &job.target_secret).await?;
        Ok::<_, job_model::SealError>((s, t))
    }
    .await;
    let (source, target) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            let body = ErrorBody::new("sealed_url_unreadable", e.to_string());
            finish(
                &*store,
                &cfg,
                Change::to(JobStatus::Failed, Timestamp::now()).error(body.clone()),
            )
            .await?;
            return Ok(Outcome::Failed(body));
        }
    };
    let mut opts = match engine_options(
        &job,
        source.expose(),
        target.expose(),
        cfg.pg_bindir.clone(),
    ) {
        Ok(o) => o,
        Err(body) => {
            finish(
                &*store,
                &cfg,
                Change::to(JobStatus::Failed, Timestamp::now()).error(body.clone()),
            )
            .await?;
            return Ok(Outcome::Failed(body));
        }
    };
    drop((source, target));
    opts.resume = resumed;

    let tracker = Tracker::default();
    tracker.set_phase("starting");
    let engine = replicator_core::init(opts, tracker.observer());
    tokio::pin!(engine);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(cfg.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            r = &mut engine => break Stop::Done(r),
            () = &mut stop => break Stop::Signal,
            _ = tick.tick() => {
                let progress = tracker.snapshot();
                match store.heartbeat(&cfg.job_id, &cfg.instance_id, Some(&progress), Timestamp::now()).await {
                    Ok(j) if j.cancel_requested_at.is_some() => break Stop::Cancel,
                    Ok(_) => {}
                    Err(StoreError::Conflict { current, .. }) => break Stop::Lost(current),
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed; trying again at the next tick"),
                }
            }
        }
    };
    // The engine future is dropped here when it did not finish: its connections close and the
    // target keeps every table finished so far.
    if matches!(ended, Stop::Done(Ok(_))) {
        tracker.set_phase("done");
    }
    let progress = tracker.snapshot();
    let now = Timestamp::now();
    let outcome = match ended {
        Stop::Done(Ok(report)) => {
            tracing::info!(
                tables = report.tables,
                rows = report.rows,
                bytes = report.bytes,
                "copy finished"
            );
            finish(
                &*store,
                &cfg,
                Change::to(JobStatus::Completed, now).progress(progress),
            )
            .await?;
            Outcome::Completed
        }
        Stop::Done(Err(e)) => {
            let body = ErrorBody::new(e.code(), e.to_string());
            tracing::warn!(code = %body.code, message = %body.message, "copy failed");
            finish(
                &*store,
                &cfg,
                Change::to(JobStatus::Failed, now)
                    .error(body.clone())
                    .progress(progress),
            )
            .await?;
            Outcome::Failed(body)
        }
        Stop::Cancel => {
            let body = ErrorBody::new(
                "cancelled",
                "cancelled by its owner; tables finished before the cancel are in the target \
                 (run again with drop_existing to start over)",
            );
            finish(
                &*store,
                &cfg,
                Change::to(JobStatus::Cancelled, now)
                    .error(body)
                    .progress(progress),
            )
            .await?;
            Outcome::Cancelled
        }
        Stop::Lost(current) => {
            tracing::warn!(%current, "the job is no longer ours (reaped or cancelled); stopping");
            Outcome::LostClaim(current)
        }
        Stop::Signal => {
            let cancel_asked = store
                .get(&cfg.job_id)
                .await?
                .is_some_and(|j| j.cancel_requested_at.is_some());
            if cancel_asked {
                finish(
                    &*store,
                    &cfg,
                    Change::to(JobStatus::Cancelled, now)
                        .error(ErrorBody::new("cancelled", "cancelled by its owner"))
                        .progress(progress),
                )
                .await?;
                Outcome::Cancelled
            } else {
                finish(
                    &*store,
                    &cfg,
                    Change::to(JobStatus::Failed, now)
                        .error(ErrorBody::new(
                            "worker_stopped",
                            "the worker was stopped (its instance shut down or the process was \
                         terminated) before the copy finished",
                        ))
                        .progress(progress),
                )
                .await?;
                Outcome::Stopped
            }
        }
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Refuses the first `refusals` opens with `err`, then opens.
    #[derive(Debug)]
    struct Flaky {
        refusals: usize,
        retryable: bool,
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Sealer for Flaky {
        async fn seal(&self, _: &str, _: &SecretString) -> Result<Vec<u8>, job_model::SealError> {
            unreachable!("workers never seal")
        }
        async fn open(&self, _: &str, _: &[u8]) -> Result<SecretString, job_model::SealError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.refusals {
                return Err(job_model::SealError::Backend {
                    message: "KMS Decrypt: AccessDeniedException".into(),
                    retryable: self.retryable,
                });
            }
            Ok(SecretString::new("postgresql://u@h/db"))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_not_yet_applied_is_waited_for_and_a_refusal_is_not() {
        let flaky = Flaky {
            refusals: 3,
            retryable: true,
            calls: AtomicUsize::new(0),
        };
        let opened = open_patiently(&flaky, "j", b"x")
            .await
            .expect("opens at last");
        assert_eq!(opened.expose(), "postgresql://u@h/db");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);

        let never = Flaky {
            refusals: usize::MAX,
            retryable: true,
            calls: AtomicUsize::new(0),
        };
        let start = tokio::time::Instant::now();
        assert!(open_patiently(&never, "j", b"x").await.is_err());
        assert!(
            start.elapsed() <= OPEN_PATIENCE,
            "gives up within its patience"
        );

        let refused = Flaky {
            refusals: 1,
            retryable: false,
            calls: AtomicUsize::new(0),
        };
        assert!(open_patiently(&refused, "j", b"x").await.is_err());
        assert_eq!(refused.calls.load(Ordering::SeqCst), 1, "no retry");
    }
}

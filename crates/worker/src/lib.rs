//! `seren-worker`: runs one remote job. It claims the job with a conditional transition
//! `provisioning → running` carrying its instance id, opens the sealed URLs, runs the engine,
//! heartbeats progress into the job record, stops when the owner cancels, and records the
//! outcome with a machine-readable error code. A second worker for the same job loses the claim
//! and leaves the job alone.
//!
//! The store and sealer come from `job-model`, the copy from `replicator-core`; this crate joins
//! them and nothing else. It never holds AWS permissions beyond its job's table and key.

pub mod progress;
pub mod spot;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use job_model::report::JobResult;
use job_model::seal::Field;
use job_model::store::retry::{Backoff, Retrying};
use job_model::{
    Change, Command, ErrorBody, Expect, Job, JobStatus, JobStore, Progress, Sealer, Secret,
    StoreError, Timestamp,
};
use replicator_core::verify::{self, VerifyOptions};
use replicator_core::{spec, validate, ConnUrl, InitOptions};

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
    /// A copy whose progress (rows, bytes, units, post-data items, phase) has not moved for
    /// this long is stuck (a lock held on either server, a hung connection): it is stopped and
    /// the job failed with `stalled`. `None`: never.
    pub stall_after: Option<Duration>,
    /// How long to keep trying to record the outcome before giving up (the instance then
    /// powers off and the reaper decides).
    pub outcome_backoff: Backoff,
    /// The CA bundle (PEM) that a job's `verify-full` URLs without a CA file of
    /// their own are checked against, by the driver and by `pg_dump` alike
    /// ([`ConnUrl::with_trust_store`]). `None`: such URLs are opened as they are.
    pub trust_store: Option<PathBuf>,
}

impl Config {
    /// The defaults for `job_id` on `instance_id`: heartbeats every 5 s, a copy stalled after
    /// 3 hours without progress, the outcome retried for 4 minutes.
    pub fn new(job_id: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            instance_id: instance_id.into(),
            heartbeat_every: Duration::from_secs(5),
            pg_bindir: None,
            stall_after: Some(DEFAULT_STALL_AFTER),
            outcome_backoff: Backoff::OUTCOME,
            trust_store: default_trust_store(),
        }
    }
}

/// Where the worker's CA bundle is looked for, in order: the bundle the AMI builds (the
/// system's CAs and the cloud database CAs, see `ami/setup-worker.sh`), then the system
/// bundles of Debian/Ubuntu/Alpine and of Amazon Linux/RHEL/Fedora.
pub const TRUST_STORES: &[&str] = &[
    "/etc/seren-worker/ca-bundle.pem",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The first of [`TRUST_STORES`] that exists.
pub fn default_trust_store() -> Option<PathBuf> {
    TRUST_STORES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// How long a copy may go without progress before it counts as stuck. Progress moves with every
/// chunk of COPY data and every post-data item finished, so only one statement running this
/// long trips it: an index or a foreign key check on a table of several TB may, and needs a
/// longer `--stall-after-secs`. Well short of the 24 h job limit.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(3 * 3600);

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
    /// The worker was told to stop (a signal); the job is `pending` for its next worker, or
    /// on its last attempt `failed` with `worker_stopped`.
    Stopped,
    /// EC2 announced it is reclaiming this spot instance; the copy stopped and the job is
    /// `pending` for its next worker (or, on its last attempt, `failed` with `interrupted`).
    Interrupted,
    /// The copy made no progress for [`Config::stall_after`]; the job is `failed` with
    /// `stalled`.
    Stalled,
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

/// What a job asks the engine to do.
// Built once per job and moved into the engine: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Work {
    /// Copy.
    Init(InitOptions),
    /// Compare.
    Verify(VerifyOptions),
    /// Run the preflight checks.
    Validate {
        source: ConnUrl,
        target: ConnUrl,
        pg_bindir: Option<PathBuf>,
    },
}

/// The engine's work for a job, or the error to fail it with.
/// The `application_name` prefix of a job's workers' sessions: `seren-job/<job id>/`, then the
/// attempt (`seren-job/…/2`), at most 49 characters (the server keeps 63). A job's next worker
/// takes over what sessions so named still hold (see `take_over_lost_run`): those of its own
/// job only, never another job's or a local run's (`postgres-seren-replicator`).
fn session_prefix(job: &Job) -> String {
    format!("seren-job/{}/", job.job_id)
}

fn plan_work(job: &Job, source: &str, target: &str, cfg: &Config) -> Result<Work, ErrorBody> {
    let source_text = source;
    let pg_bindir = cfg.pg_bindir.clone();
    let session_name = format!("{}{}", session_prefix(job), job.attempt);
    let url = |side: &str, text: &str| {
        let mut url = ConnUrl::parse_remote(text)
            .map_err(|e| ErrorBody::new("invalid_url", format!("{side} URL: {e}")))?;
        if url.application_name.is_none() {
            url.application_name = Some(session_name.clone());
        }
        Ok::<_, ErrorBody>(match &cfg.trust_store {
            Some(bundle) => url.with_trust_store(bundle),
            None => url,
        })
    };
    let (source, target) = (url("source", source)?, url("target", target)?);
    let spec = &job.spec;
    let usage = |e: replicator_core::Error| ErrorBody::new(e.code(), e.to_string());
    match spec.command {
        Command::Init => {
            // The target server reaches the source for replication by the URL as its owner
            // gave it: the worker's CA bundle is a file on the worker, not on that server.
            let as_given = ConnUrl::parse_remote(source_text)
                .map_err(|e| ErrorBody::new("invalid_url", format!("source URL: {e}")))?;
            let mut opts = spec::init_options(source, target, spec).map_err(usage)?;
            opts.pg_bindir = pg_bindir;
            opts.sync_source = Some(as_given);
            Ok(Work::Init(opts))
        }
        Command::Verify => Ok(Work::Verify(
            spec::verify_options(source, target, spec).map_err(usage)?,
        )),
        Command::Validate => Ok(Work::Validate {
            source,
            target,
            pg_bindir,
        }),
        Command::Sync => Err(ErrorBody::new(
            "unsupported_command",
            "sync is not run by a worker: run `postgres-seren-replicator sync` from a machine \
             that reaches both databases (replication itself runs in the target server)",
        )),
    }
}

/// What the engine returned.
// One value per job, held briefly: the size of the report variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Done {
    /// A copy's report.
    Copied(replicator_core::InitReport),
    /// A verify or validate report for the job record, and the error to fail the job with when
    /// it found differences or failed checks.
    Report {
        result: JobResult,
        verdict: Option<ErrorBody>,
    },
}

/// Run the work. `tracker` gets the phase of the commands that report no progress themselves.
/// When `halt` resolves, a copy stops as the engine stops one on a signal (the unit in flight
/// rolls back, what it made and cannot use again is removed) and returns `Cancelled`.
async fn perform(
    work: Work,
    tracker: &Tracker,
    halt: impl Future<Output = ()>,
) -> replicator_core::Result<Done> {
    match work {
        Work::Init(opts) => replicator_core::init_until(opts, tracker.observer(), halt)
            .await
            .map(Done::Copied),
        Work::Verify(opts) => {
            tracker.set_phase("verify");
            let report = verify::verify(opts).await?;
            let differing: Vec<String> = report
                .tables
                .iter()
                .filter(|t| !t.equal())
                .map(|t| t.table.to_string())
                .collect();
            let verdict = (!differing.is_empty()).then(|| {
                ErrorBody::new(
                    "verify_mismatch",
                    format!(
                        "{} of {} tables differ between source and target: {}",
                        differing.len(),
                        report.tables.len(),
                        name_list(&differing)
                    ),
                )
            });
            Ok(Done::Report {
                result: JobResult::Verify(report.to_result().fit(MAX_RESULT_BYTES)),
                verdict,
            })
        }
        Work::Validate {
            source,
            target,
            pg_bindir,
        } => {
            tracker.set_phase("validate");
            let checks = validate::validate(&source, &target, pg_bindir).await;
            let failed: Vec<String> = checks
                .iter()
                .filter(|c| c.verdict == validate::Verdict::Fail)
                .map(|c| c.name.to_owned())
                .collect();
            let verdict = (!failed.is_empty()).then(|| {
                ErrorBody::new(
                    "validate_failed",
                    format!("{} check(s) failed: {}", failed.len(), name_list(&failed)),
                )
            });
            Ok(Done::Report {
                result: JobResult::Validate(validate::to_result(&checks)),
                verdict,
            })
        }
    }
}

/// At most ten names, then how many more.
fn name_list(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(10) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The most a result may take in the job record: a DynamoDB item holds at most 400 KB, and
/// the rest of the record needs room too.
const MAX_RESULT_BYTES: usize = 256 * 1024;

/// How long a worker waits for a job that is still `pending`: the coordinator records
/// `provisioning` only once the launch call has returned, and a local worker process (or, in
/// principle, a fast instance) can start before that.
const PENDING_PATIENCE: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
    deadline: Duration::from_secs(60),
};

/// Claim the job: `provisioning → running` on this instance. Returns the job, or the status
/// that made the claim fail. A job already running on this same instance (a restarted worker)
/// is taken back, and the engine resumes it. A job still `pending` is waited for.
async fn claim(
    store: &dyn JobStore,
    cfg: &Config,
) -> Result<Result<(Job, bool), JobStatus>, WorkerError> {
    let still_pending = |e: &StoreError| {
        matches!(
            e,
            StoreError::Conflict {
                current: JobStatus::Pending,
                ..
            }
        )
    };
    let result = PENDING_PATIENCE
        .run("claim the job (still pending)", still_pending, || {
            let change =
                Change::to(JobStatus::Running, Timestamp::now()).instance(&cfg.instance_id);
            store.transition(&cfg.job_id, Expect::status(JobStatus::Provisioning), change)
        })
        .await;
    match result {
        // A later attempt's worker resumes what the lost one left.
        Ok(job) => {
            let resumed = job.attempt > 1;
            Ok(Ok((job, resumed)))
        }
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

/// What [`hand_over`] recorded.
enum HandedOver {
    /// Its owner had asked for a cancel: `cancelled`.
    Cancelled,
    /// `pending` for its next worker.
    Next,
    /// Its last attempt: `failed`.
    Failed,
}

/// A copy this worker could not finish (its instance is going away): `cancelled` when the
/// owner asked for it, else `pending` for the next worker, which resumes it (the reaper starts
/// it), or `failed` on the job's last attempt. `cause` is the code and why.
async fn hand_over(
    store: &Arc<dyn JobStore>,
    cfg: &Config,
    job: &Job,
    progress: Progress,
    now: Timestamp,
    (code, why): (&str, &str),
) -> Result<HandedOver, WorkerError> {
    if cancel_asked(store, cfg).await? {
        let change = Change::to(JobStatus::Cancelled, now)
            .error(ErrorBody::new("cancelled", "cancelled by its owner"))
            .progress(progress);
        finish(store, cfg, change).await?;
        return Ok(HandedOver::Cancelled);
    }
    let allowed = job.spec.options.attempts_allowed();
    let what = if code == "interrupted" {
        "interrupted"
    } else {
        "stopped"
    };
    let after = progress
        .percent()
        .map_or_else(String::new, |p| format!(" after {p} %"));
    if job.attempt < allowed {
        let body = ErrorBody::new(
            code,
            format!(
                "worker {what}{after}: {why}; resuming on attempt {}/{allowed}",
                job.attempt + 1
            ),
        );
        let change = Change::retry(now, job.attempt + 1, body).progress(progress);
        finish(store, cfg, change).await?;
        Ok(HandedOver::Next)
    } else {
        let body = ErrorBody::new(
            code,
            format!(
                "worker {what}{after}: {why} (attempt {}/{allowed}: no attempt left); tables \
                 finished before it are in the target",
                job.attempt
            ),
        );
        fail_with(store, cfg, body, Some(progress)).await?;
        Ok(HandedOver::Failed)
    }
}

/// Whether the job's owner asked it to stop (read now: the last heartbeat may predate it).
async fn cancel_asked(store: &Arc<dyn JobStore>, cfg: &Config) -> Result<bool, WorkerError> {
    Ok(store
        .get(&cfg.job_id)
        .await?
        .is_some_and(|j| j.cancel_requested_at.is_some()))
}

/// Record the final status, trying again under [`Config::outcome_backoff`] while the store
/// says it may help (a completed copy must not become `heartbeat_lost` for one throttled
/// write); a conflict (the reaper or a cancel got there first, or the job is another
/// worker's now) is logged, not an error.
async fn finish(
    store: &Arc<dyn JobStore>,
    cfg: &Config,
    change: Change,
) -> Result<(), WorkerError> {
    let to = change.to;
    let store = Retrying::new(store.clone(), cfg.outcome_backoff);
    // Held by this instance: a worker given up for lost that writes late must not end (or
    // hand on) the attempt of the worker that replaced it.
    let expect = Expect::status(JobStatus::Running).held_by(&cfg.instance_id);
    match store.transition(&cfg.job_id, expect, change).await {
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

/// Record `failed` with `body` and, when there is any, the progress so far; `body` back for the
/// outcome.
async fn fail_with(
    store: &Arc<dyn JobStore>,
    cfg: &Config,
    body: ErrorBody,
    progress: Option<Progress>,
) -> Result<ErrorBody, WorkerError> {
    let mut change = Change::to(JobStatus::Failed, Timestamp::now()).error(body.clone());
    if let Some(p) = progress {
        change = change.progress(p);
    }
    finish(store, cfg, change).await?;
    Ok(body)
}

// One value per job, held briefly: the size of the report variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Stop {
    Done(replicator_core::Result<Done>),
    Cancel,
    Lost(JobStatus),
    Signal,
    Interrupted(String),
    Stalled(Duration),
}

/// What the stall detector compares: everything that moves while a copy works.
fn movement(p: &Progress) -> (String, u64, u64, u64, u64, u64) {
    (
        p.phase.clone(),
        p.tables_done,
        p.rows,
        p.bytes,
        p.units_done,
        p.post_items_done,
    )
}

/// How long a worker keeps trying to open its job's URLs while the sealer says trying again
/// may help: on EC2 the worker's KMS grant is made as it boots and can take a moment to apply.
const OPEN_PATIENCE: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(15),
    deadline: Duration::from_secs(120),
};

async fn open_patiently(
    sealer: &dyn Sealer,
    job_id: &str,
    field: Field,
    sealed: &[u8],
) -> Result<Secret, job_model::SealError> {
    let may_apply_later = |e: &job_model::SealError| {
        matches!(
            e,
            job_model::SealError::Backend {
                retryable: true,
                ..
            }
        )
    };
    OPEN_PATIENCE
        .run("open the job's URLs", may_apply_later, || {
            sealer.open(job_id, field, sealed)
        })
        .await
}

/// Run the job named in `cfg` to its end. `stop` resolves when the worker must stop (SIGTERM);
/// the job is then `cancelled` if its owner asked for it, else `pending` for its next worker
/// (`worker_stopped`; `failed` with that code on its last attempt).
///
/// # Errors
/// When the job does not exist or the store fails where no status can be recorded.
pub async fn run(
    store: Arc<dyn JobStore>,
    sealer: Arc<dyn Sealer>,
    cfg: Config,
    stop: impl Future<Output = ()>,
) -> Result<Outcome, WorkerError> {
    run_watched(store, sealer, cfg, stop, std::future::pending()).await
}

/// [`run`], also watching for a spot interruption notice: when `notice` resolves (with the
/// notice's text, see [`spot::interruption_notice`]) the copy stops as for a cancel and the job
/// is failed with `interrupted`, so that whoever runs it next knows it can simply run again.
///
/// # Errors
/// As [`run`].
pub async fn run_watched(
    store: Arc<dyn JobStore>,
    sealer: Arc<dyn Sealer>,
    cfg: Config,
    stop: impl Future<Output = ()>,
    notice: impl Future<Output = String>,
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
        let s = open_patiently(&*sealer, &job.job_id, Field::SourceUrl, &job.source_secret).await?;
        let t = open_patiently(&*sealer, &job.job_id, Field::TargetUrl, &job.target_secret).await?;
        Ok::<_, job_model::SealError>((s, t))
    }
    .await;
    let (source, target) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            let body = ErrorBody::new("sealed_url_unreadable", e.to_string());
            return Ok(Outcome::Failed(fail_with(&store, &cfg, body, None).await?));
        }
    };
    let mut work = match plan_work(&job, source.expose(), target.expose(), &cfg) {
        Ok(w) => w,
        Err(body) => return Ok(Outcome::Failed(fail_with(&store, &cfg, body, None).await?)),
    };
    drop((source, target));
    if let Work::Init(opts) = &mut work {
        // A job claimed before finishes what its earlier worker left, when that worker got as
        // far as leaving something; otherwise it starts afresh.
        opts.resume = resumed
            && matches!(
                replicator_core::inspect_target(&opts.target).await,
                Ok(replicator_core::TargetState::Interrupted
                    | replicator_core::TargetState::AwaitingReplication)
            );
        if opts.resume {
            // `drop_existing` was for the start: a worker that resumes keeps what the one
            // before copied (and the engine refuses --resume with --drop-existing).
            opts.drop_existing = false;
        }
        // The worker before was given up for lost and has ended (the reaper starts the next
        // only then), or it was this instance's own worker, restarted: a run lock its sessions
        // still hold on the source is a dead machine's, which the source may not notice for
        // hours. Only sessions named as this job's workers name theirs are taken over; a URL
        // that names its own application_name leaves nothing to tell them by.
        let prefix = session_prefix(&job);
        let ours = |u: &ConnUrl| {
            u.application_name
                .as_deref()
                .is_some_and(|a| a.starts_with(&prefix))
        };
        opts.take_over_lost_run =
            (resumed && ours(&opts.source) && ours(&opts.target)).then_some(prefix);
    }

    let watch_stall = matches!(work, Work::Init(_));
    let tracker = Tracker::default();
    if resumed {
        if let Some(p) = &job.progress {
            tracker.carry_warnings(&p.warnings);
        }
    }
    tracker.set_phase("starting");
    let (halt, halted) = tokio::sync::oneshot::channel::<()>();
    let engine = perform(work, &tracker, async move {
        let _ = halted.await;
    });
    tokio::pin!(engine);
    tokio::pin!(stop);
    tokio::pin!(notice);
    let mut tick = tokio::time::interval(cfg.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_move = (movement(&tracker.snapshot()), tokio::time::Instant::now());
    let ended = loop {
        tokio::select! {
            r = &mut engine => break Stop::Done(r),
            () = &mut stop => break Stop::Signal,
            text = &mut notice => break Stop::Interrupted(text),
            _ = tick.tick() => {
                let progress = tracker.snapshot();
                let moved = movement(&progress);
                if moved != last_move.0 {
                    last_move = (moved, tokio::time::Instant::now());
                } else if let Some(limit) = cfg.stall_after.filter(|_| watch_stall) {
                    if last_move.1.elapsed() >= limit {
                        break Stop::Stalled(limit);
                    }
                }
                match store.heartbeat(&cfg.job_id, &cfg.instance_id, Some(&progress), Timestamp::now()).await {
                    Ok(j) if j.cancel_requested_at.is_some() => break Stop::Cancel,
                    Ok(_) => {}
                    Err(StoreError::Conflict { current, .. }) => break Stop::Lost(current),
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed; trying again at the next tick"),
                }
            }
        }
    };
    // A copy that did not finish is told to stop and given time to clean up after itself (its
    // connections close, the target keeps every table finished so far).
    if !matches!(ended, Stop::Done(_)) {
        let _ = halt.send(());
        if tokio::time::timeout(Duration::from_secs(60), &mut engine)
            .await
            .is_err()
        {
            tracing::warn!("the engine did not stop within 60 s; leaving it");
        }
    }
    if matches!(ended, Stop::Done(Ok(_))) {
        tracker.set_phase("done");
    }
    let progress = tracker.snapshot();
    let now = Timestamp::now();
    let outcome = match ended {
        Stop::Done(Ok(Done::Copied(report))) => {
            tracing::info!(
                tables = report.tables,
                rows = report.rows,
                bytes = report.bytes,
                "copy finished"
            );
            if let Some(s) = &report.sync {
                tracing::info!(slot = %s.names.slot, subscription = %s.names.subscription,
                    "replication runs in the target server");
            }
            finish(
                &store,
                &cfg,
                Change::to(JobStatus::Completed, now)
                    .progress(progress)
                    .result(JobResult::Init(report.to_result())),
            )
            .await?;
            Outcome::Completed
        }
        Stop::Done(Ok(Done::Report {
            result,
            verdict: None,
        })) => {
            tracing::info!(command = %job.spec.command, "finished: all clear");
            finish(
                &store,
                &cfg,
                Change::to(JobStatus::Completed, now)
                    .progress(progress)
                    .result(result),
            )
            .await?;
            Outcome::Completed
        }
        Stop::Done(Ok(Done::Report {
            result,
            verdict: Some(body),
        })) => {
            tracing::warn!(code = %body.code, message = %body.message, "finished with findings");
            finish(
                &store,
                &cfg,
                Change::to(JobStatus::Failed, now)
                    .error(body.clone())
                    .progress(progress)
                    .result(result),
            )
            .await?;
            Outcome::Failed(body)
        }
        Stop::Done(Err(e)) => {
            let body = ErrorBody::new(e.code(), e.to_string());
            tracing::warn!(code = %body.code, message = %body.message, "copy failed");
            Outcome::Failed(fail_with(&store, &cfg, body, Some(progress)).await?)
        }
        Stop::Cancel => {
            let body = ErrorBody::new(
                "cancelled",
                "cancelled by its owner; tables finished before the cancel are in the target \
                 (run again with drop_existing to start over)",
            );
            finish(
                &store,
                &cfg,
                Change::to(JobStatus::Cancelled, now)
                    .error(body)
                    .progress(progress),
            )
            .await?;
            Outcome::Cancelled
        }
        Stop::Interrupted(text) => {
            tracing::warn!(notice = %text, "spot interruption notice; the copy stopped");
            let cause = ("interrupted", "EC2 reclaimed the spot instance it ran on");
            match hand_over(&store, &cfg, &job, progress, now, cause).await? {
                HandedOver::Cancelled => Outcome::Cancelled,
                HandedOver::Next | HandedOver::Failed => Outcome::Interrupted,
            }
        }
        Stop::Stalled(limit) => {
            let body = ErrorBody::new(
                "stalled",
                format!(
                    "the copy made no progress for {} s (phase {}, {} of {} units, {} of {} \
                     post-data items): a lock held on the source or the target, or a hung \
                     connection, blocks it; the worker stopped",
                    limit.as_secs(),
                    progress.phase,
                    progress.units_done,
                    progress.units_total,
                    progress.post_items_done,
                    progress.post_items_total
                ),
            );
            tracing::warn!(message = %body.message, "stalled");
            fail_with(&store, &cfg, body, Some(progress)).await?;
            Outcome::Stalled
        }
        Stop::Lost(current) => {
            tracing::warn!(%current, "the job is no longer ours (reaped or cancelled); stopping");
            Outcome::LostClaim(current)
        }
        Stop::Signal => {
            // Its instance was stopped or terminated, or the process killed, by someone other
            // than the control plane (which ends a job before it stops its worker).
            let cause = (
                "worker_stopped",
                "its instance shut down or the process was terminated",
            );
            match hand_over(&store, &cfg, &job, progress, now, cause).await? {
                HandedOver::Cancelled => Outcome::Cancelled,
                HandedOver::Next | HandedOver::Failed => Outcome::Stopped,
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
        async fn seal(
            &self,
            _: &str,
            _: Field,
            _: &Secret,
        ) -> Result<Vec<u8>, job_model::SealError> {
            unreachable!("workers never seal")
        }
        async fn open(&self, _: &str, _: Field, _: &[u8]) -> Result<Secret, job_model::SealError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.refusals {
                return Err(job_model::SealError::Backend {
                    message: "KMS Decrypt: AccessDeniedException".into(),
                    retryable: self.retryable,
                });
            }
            Ok(Secret::new("postgresql://u@h/db"))
        }
    }

    /// The worker checks a verify-full source against its own CA bundle, but the target
    /// server, which replicates from the source after the worker is gone, gets the URL as its
    /// owner gave it: the bundle is a file on the worker.
    #[test]
    fn the_subscription_never_names_the_workers_ca_bundle() {
        let source = "postgresql://app:pw@db.example.com/shop?sslmode=verify-full";
        let job = Job::new(
            Job::new_id(),
            job_model::Owner("key-x".into()),
            job_model::JobSpec {
                command: Command::Init,
                filter: job_model::FilterSpec::default(),
                options: job_model::Options {
                    sync: Some(job_model::SyncChoice::Required),
                    ..job_model::Options::default()
                },
            },
            (vec![], vec![]),
            (String::new(), String::new()),
            None,
            Timestamp::now(),
            job_model::job::DEFAULT_RETENTION,
        );
        let mut cfg = Config::new(job.job_id.clone(), "i-1");
        let bundle = PathBuf::from("/etc/seren-worker/ca-bundle.pem");
        cfg.trust_store = Some(bundle.clone());
        let Ok(Work::Init(opts)) = plan_work(
            &job,
            source,
            "postgresql://app:pw@new.example.com/shop",
            &cfg,
        ) else {
            panic!("an init job");
        };
        assert_eq!(opts.source.sslrootcert, Some(bundle));
        assert_eq!(opts.sync, replicator_core::sync::SyncMode::Required);
        let via = opts.sync_source.expect("the URL for the target server");
        assert_eq!(via.sslrootcert, None);
        let conninfo = replicator_core::sync::subscription_conninfo(&via);
        assert!(
            !conninfo.contains("sslrootcert") && conninfo.contains("sslmode=verify-full"),
            "{conninfo}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_not_yet_applied_is_waited_for_and_a_refusal_is_not() {
        let flaky = Flaky {
            refusals: 3,
            retryable: true,
            calls: AtomicUsize::new(0),
        };
        let opened = open_patiently(&flaky, "j", Field::SourceUrl, b"x")
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
        assert!(open_patiently(&never, "j", Field::SourceUrl, b"x")
            .await
            .is_err());
        assert!(
            start.elapsed() <= OPEN_PATIENCE.deadline,
            "gives up within its patience"
        );

        let refused = Flaky {
            refusals: 1,
            retryable: false,
            calls: AtomicUsize::new(0),
        };
        assert!(open_patiently(&refused, "j", Field::SourceUrl, b"x")
            .await
            .is_err());
        assert_eq!(refused.calls.load(Ordering::SeqCst), 1, "no retry");
    }
}

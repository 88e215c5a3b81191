//! The reaper: ends jobs whose worker went quiet, never started or ran too long, and
//! terminates workers whose job is over. Run by a scheduled Lambda on AWS and by an interval
//! task in the local server. Every change is a conditional write that one of two passes at
//! once loses; starting a job's next worker reads the job again first, so that a pass working
//! from a stale listing does not stop the worker another pass has just started.

use std::collections::HashMap;
use std::time::Duration;

use job_model::{Change, ErrorBody, Expect, Job, JobStatus, JobStore, StoreError, Timestamp};
use serde::Serialize;

use crate::provision::Provisioner;

/// When the reaper steps in.
#[derive(Debug, Clone)]
pub struct Policy {
    /// A running job without a heartbeat for this long has lost its worker.
    pub heartbeat_timeout: Duration,
    /// A job provisioning for this long never got a worker.
    pub provisioning_timeout: Duration,
    /// A job pending for this long was never provisioned (the coordinator died mid-submit).
    pub pending_timeout: Duration,
    /// A running job without its own `timeout_seconds` is stopped after this long.
    pub default_job_timeout: Duration,
    /// A running job whose owner asked it to stop gets this long to stop by itself.
    pub cancel_grace: Duration,
    /// A worker whose job finished this long ago (or whose job is unknown) is terminated.
    pub orphan_grace: Duration,
    /// The stored count of active jobs is corrected only when it has not changed for this
    /// long (a job created a moment ago may not show in the listing that counts yet).
    pub count_quiet: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(5 * 60),
            provisioning_timeout: Duration::from_secs(15 * 60),
            pending_timeout: Duration::from_secs(5 * 60),
            default_job_timeout: Duration::from_secs(24 * 3600),
            cancel_grace: Duration::from_secs(2 * 60),
            orphan_grace: Duration::from_secs(2 * 60),
            count_quiet: Duration::from_secs(60),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Jobs moved to `failed`.
    pub failed: Vec<String>,
    /// Jobs moved to `timed_out`.
    pub timed_out: Vec<String>,
    /// Jobs moved to `cancelled`.
    pub cancelled: Vec<String>,
    /// Jobs whose worker was lost and that got a new one, which resumes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relaunched: Vec<String>,
    /// Jobs waiting for their lost worker to end (an instance still shutting down) before the
    /// next one starts, at a later pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    /// Worker instances terminated.
    pub terminated: Vec<String>,
    /// Jobs whose finished workers' KMS grants were revoked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants_revoked: Vec<String>,
    /// The count of active jobs (for `max_concurrent_jobs`) as it was and as it was corrected
    /// to, when it had drifted from the jobs really active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_corrected: Option<job_model::ReconciledCount>,
    /// What failed in this pass, one line each (`step: error`). Each step (the active jobs of
    /// each status, each job's workers, the orphaned workers, the grant sweep) runs whatever
    /// an earlier one did: one failing call does not keep the others from their work.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// What the reaper can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provisioner failed.
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
}

async fn all_in(store: &dyn JobStore, status: JobStatus) -> Result<Vec<Job>, StoreError> {
    let mut jobs = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_by_status(status, 100, cursor.as_ref()).await?;
        jobs.extend(page.jobs);
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(jobs),
        }
    }
}

/// What should happen to an active job at `now`, if anything.
fn verdict(job: &Job, policy: &Policy, now: Timestamp) -> Option<(JobStatus, ErrorBody)> {
    let age = |t: Option<Timestamp>| now.since(t.unwrap_or(job.updated_at));
    match job.status {
        JobStatus::Running => {
            if let Some(asked) = job.cancel_requested_at {
                if now.since(asked) > policy.cancel_grace {
                    return Some((
                        JobStatus::Cancelled,
                        ErrorBody::new(
                            "cancelled",
                            "cancelled by its owner; the worker did not stop by itself and was terminated",
                        ),
                    ));
                }
            }
            let limit = job
                .spec
                .options
                .timeout_seconds
                .map_or(policy.default_job_timeout, Duration::from_secs);
            if age(job.started_at) > limit {
                return Some((
                    JobStatus::TimedOut,
                    ErrorBody::new(
                        "timed_out",
                        format!(
                            "ran longer than its limit of {} s; give options.timeout_seconds for a longer one",
                            limit.as_secs()
                        ),
                    ),
                ));
            }
            if age(job.heartbeat_at) > policy.heartbeat_timeout {
                return Some((
                    JobStatus::Failed,
                    ErrorBody::new(
                        "heartbeat_lost",
                        format!(
                            "the worker stopped reporting for over {} s (crashed, killed or lost its network); its instance was terminated",
                            policy.heartbeat_timeout.as_secs()
                        ),
                    ),
                ));
            }
            None
        }
        JobStatus::Provisioning => {
            if job.cancel_requested_at.is_some() {
                return Some((
                    JobStatus::Cancelled,
                    ErrorBody::new("cancelled", "cancelled by its owner before it started"),
                ));
            }
            (age(None) > policy.provisioning_timeout).then(|| {
                (
                    JobStatus::Failed,
                    ErrorBody::new(
                        "worker_never_started",
                        format!(
                            "no worker claimed the job within {} s of launch; check the worker's console output",
                            policy.provisioning_timeout.as_secs()
                        ),
                    ),
                )
            })
        }
        JobStatus::Pending => (now.since(job.created_at) > policy.pending_timeout).then(|| {
            (
                JobStatus::Failed,
                ErrorBody::new(
                    "never_provisioned",
                    "the coordinator stopped before starting a worker; submit the job again",
                ),
            )
        }),
        _ => None,
    }
}

/// One pass over the active jobs and the live workers. Every step runs even when an earlier
/// one failed; what failed is in [`Report::failures`].
pub async fn reap(
    store: &dyn JobStore,
    provisioner: &dyn Provisioner,
    policy: &Policy,
    now: Timestamp,
) -> Report {
    let mut report = Report::default();
    let mut active: HashMap<String, Job> = HashMap::new();
    for status in JobStatus::ACTIVE {
        let jobs = match all_in(store, status).await {
            Ok(jobs) => jobs,
            Err(e) => {
                report.failures.push(format!("list the {status} jobs: {e}"));
                continue;
            }
        };
        for job in jobs {
            if job.status == JobStatus::Pending && job.attempt > 1 {
                // A job whose worker was lost (or recorded its own interruption) waits for its
                // next worker: start it now, unless its owner asked it to stop or starting one
                // has failed for longer than a pending job may wait.
                let end = if job.cancel_requested_at.is_some() {
                    Some((
                        JobStatus::Cancelled,
                        ErrorBody::new("cancelled", "cancelled by its owner between two workers"),
                    ))
                } else if now.since(job.updated_at) > policy.pending_timeout {
                    Some((
                        JobStatus::Failed,
                        ErrorBody::new(
                            "never_provisioned",
                            format!(
                                "no worker could be started for attempt {} within {} s",
                                job.attempt,
                                policy.pending_timeout.as_secs()
                            ),
                        ),
                    ))
                } else {
                    None
                };
                match end {
                    None => relaunch(store, provisioner, &job, &mut report).await,
                    Some((to, error)) => {
                        end_job(store, provisioner, &job, to, error, now, &mut report).await;
                    }
                }
                continue;
            }
            let Some((to, mut error)) = verdict(&job, policy, now) else {
                active.insert(job.job_id.clone(), job);
                continue;
            };
            if error.code == "heartbeat_lost" {
                if let Some(spot) = spot_reclaimed(provisioner, &job, &mut report).await {
                    error = spot;
                }
            }
            let lost = matches!(error.code.as_str(), "heartbeat_lost" | "interrupted");
            let allowed = job.spec.options.attempts_allowed();
            if lost
                && job.status == JobStatus::Running
                && job.attempt < allowed
                && job.cancel_requested_at.is_none()
            {
                error.message = format!(
                    "{}{}; resuming on attempt {}/{allowed}",
                    lost_after(&job),
                    error.message,
                    job.attempt + 1
                );
                match store
                    .transition(
                        &job.job_id,
                        Expect::job(&job),
                        Change::retry(now, job.attempt + 1, error),
                    )
                    .await
                {
                    Ok(retried) => {
                        tracing::warn!(job_id = %job.job_id, attempt = retried.attempt, "worker lost; starting another");
                        relaunch(store, provisioner, &retried, &mut report).await;
                    }
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                    Err(e) => report
                        .failures
                        .push(format!("record job {} for another worker: {e}", job.job_id)),
                }
                continue;
            }
            if lost && job.status == JobStatus::Running {
                error.message = format!(
                    "{}{} (attempt {}/{allowed}: no attempt left)",
                    lost_after(&job),
                    error.message,
                    job.attempt
                );
            }
            if job.status == JobStatus::Running && replicates(&job) {
                // The worker went without cleaning up after itself; the reaper cannot reach
                // the databases (it holds no URL it could open).
                error.message.push_str(
                    "; this job replicates, so a replication slot it made may remain on the \
                     source and keep its WAL: `postgres-seren-replicator status` with the job's \
                     URLs names it, `sync --stop` drops it",
                );
            }
            end_job(store, provisioner, &job, to, error, now, &mut report).await;
        }
    }
    // Workers whose job is over or unknown.
    match provisioner.list().await {
        Ok(workers) => {
            for w in workers {
                if let Err(e) =
                    reap_worker(store, provisioner, policy, now, &active, &w, &mut report).await
                {
                    report
                        .failures
                        .push(format!("check worker {}: {e}", w.instance_id));
                }
            }
        }
        Err(e) => report.failures.push(format!("list the workers: {e}")),
    }
    match provisioner.sweep(now).await {
        Ok(revoked) => report.grants_revoked = revoked,
        Err(e) => report.failures.push(format!("sweep the grants: {e}")),
    }
    // After this pass's own finishes, which moved the count themselves.
    match store.reconcile_active(policy.count_quiet).await {
        Ok(Some(c)) => {
            tracing::warn!(
                was = c.was,
                now = c.now,
                "corrected the count of active jobs"
            );
            report.count_corrected = Some(c);
        }
        Ok(None) => {}
        Err(e) => report
            .failures
            .push(format!("reconcile the count of active jobs: {e}")),
    }
    for f in &report.failures {
        tracing::error!(failure = %f, "reaper step failed");
    }
    report
}

/// End `job` as `to` (if it is still as read) and terminate its workers.
async fn end_job(
    store: &dyn JobStore,
    provisioner: &dyn Provisioner,
    job: &Job,
    to: JobStatus,
    error: ErrorBody,
    now: Timestamp,
    report: &mut Report,
) {
    let change = Change::to(to, now).error(error);
    match store
        .transition(&job.job_id, Expect::job(job), change)
        .await
    {
        Ok(_) => {
            tracing::warn!(job_id = %job.job_id, from = %job.status, %to, "reaped job");
            match to {
                JobStatus::Failed => report.failed.push(job.job_id.clone()),
                JobStatus::TimedOut => report.timed_out.push(job.job_id.clone()),
                _ => report.cancelled.push(job.job_id.clone()),
            }
            match provisioner.terminate(&job.job_id).await {
                Ok(ids) => report.terminated.extend(ids),
                Err(e) => report
                    .failures
                    .push(format!("terminate the workers of job {}: {e}", job.job_id)),
            }
        }
        // It moved on (a heartbeat, a claim, a finish): alive after all.
        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
        Err(e) => report
            .failures
            .push(format!("record job {} as {to}: {e}", job.job_id)),
    }
}

/// "worker lost after 42 %: " from the job's last progress, or "worker lost: ".
fn lost_after(job: &Job) -> String {
    match job.progress.as_ref().and_then(job_model::Progress::percent) {
        Some(p) => format!("worker lost after {p} %: "),
        None => "worker lost: ".into(),
    }
}

/// Start the next worker of `job` (`pending` after its worker was lost): the lost one is
/// terminated first, since a launch returns a live worker of the job instead of starting one.
async fn relaunch(
    store: &dyn JobStore,
    provisioner: &dyn Provisioner,
    job: &Job,
    report: &mut Report,
) {
    // Read again: a listing can be stale, and a second pass may have started this worker
    // already (terminating now would kill it).
    match store.get(&job.job_id).await {
        Ok(Some(now)) if now.status == JobStatus::Pending && now.version == job.version => {}
        Ok(_) => return,
        Err(e) => {
            report.failures.push(format!(
                "read job {} before starting its worker: {e}",
                job.job_id
            ));
            return;
        }
    }
    match provisioner.terminate(&job.job_id).await {
        Ok(ids) => report.terminated.extend(ids),
        Err(e) => {
            report.failures.push(format!(
                "terminate the lost worker of job {} before starting another: {e}",
                job.job_id
            ));
            return;
        }
    }
    // Not while the lost one may still run its clean-up (an instance shutting down, a process
    // in its stop grace): the next worker takes over what the lost one holds on the servers,
    // so the two must never overlap. A later pass starts it.
    if let Some(lost) = &job.instance_id {
        match provisioner.is_gone(lost).await {
            Ok(true) => {}
            Ok(false) => {
                report.waiting.push(job.job_id.clone());
                return;
            }
            Err(e) => {
                report.failures.push(format!(
                    "see whether the lost worker {lost} of job {} has ended: {e}",
                    job.job_id
                ));
                return;
            }
        }
    }
    match crate::provision::start_worker(store, provisioner, job).await {
        Ok(JobStatus::Provisioning) => report.relaunched.push(job.job_id.clone()),
        Ok(JobStatus::Failed) => report.failed.push(job.job_id.clone()),
        Ok(_) => {}
        Err(e) => report
            .failures
            .push(format!("record the new worker of job {}: {e}", job.job_id)),
    }
}

/// Whether `job` sets up replication (and so may leave a slot on the source when its worker
/// dies).
fn replicates(job: &Job) -> bool {
    matches!(
        job.spec.options.sync,
        Some(job_model::SyncChoice::Auto | job_model::SyncChoice::Required)
    )
}

/// The error for a job whose heartbeat stopped because its provider reclaimed the spot
/// instance (before the worker could record `interrupted` itself), when that is what happened.
async fn spot_reclaimed(
    provisioner: &dyn Provisioner,
    job: &Job,
    report: &mut Report,
) -> Option<ErrorBody> {
    let instance = job.instance_id.as_deref()?;
    match provisioner.why_gone(instance).await {
        Ok(Some(crate::provision::Gone::SpotReclaimed { reason })) => Some(ErrorBody::new(
            "interrupted",
            format!(
                "EC2 reclaimed the spot instance {instance} ({reason}) before its worker could \
                 record it"
            ),
        )),
        Ok(_) => None,
        Err(e) => {
            report.failures.push(format!(
                "ask why worker {instance} of job {} is gone: {e}",
                job.job_id
            ));
            None
        }
    }
}

/// Terminate worker `w` when its job is over or unknown (past the grace).
async fn reap_worker(
    store: &dyn JobStore,
    provisioner: &dyn Provisioner,
    policy: &Policy,
    now: Timestamp,
    active: &HashMap<String, Job>,
    w: &crate::provision::Worker,
    report: &mut Report,
) -> Result<(), ReapError> {
    let young = w
        .launched_at
        .is_some_and(|t| now.since(t) < policy.orphan_grace);
    let orphan = match w.job_id.as_deref() {
        Some(id) if active.contains_key(id) => false,
        Some(id) => match store.get(id).await? {
            Some(job) if !job.status.is_terminal() => false,
            Some(job) => job
                .finished_at
                .is_none_or(|t| now.since(t) > policy.orphan_grace),
            // Unknown job: give a just-launched instance time for its record to appear.
            None => !young,
        },
        None => !young,
    };
    if orphan {
        tracing::warn!(instance_id = %w.instance_id, job_id = ?w.job_id, "terminating orphaned worker");
        provisioner.terminate_instance(&w.instance_id).await?;
        report.terminated.push(w.instance_id.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use job_model::{Command, JobSpec, Options, Owner};

    const MIN: u64 = 60;

    fn job(status: JobStatus, now: Timestamp) -> Job {
        let mut j = Job::new(
            Job::new_id(),
            Owner("key-x".into()),
            JobSpec {
                command: Command::Init,
                filter: Default::default(),
                options: Options::default(),
            },
            (vec![], vec![]),
            (String::new(), String::new()),
            None,
            now,
            job_model::job::DEFAULT_RETENTION,
        );
        j.status = status;
        j
    }

    fn ago(now: Timestamp, secs: u64) -> Timestamp {
        Timestamp::from_unix_millis(now.unix_millis() - i64::try_from(secs * 1000).unwrap_or(0))
    }

    fn fake_plan() -> crate::provision::Plan {
        crate::provision::Plan {
            instance_type: "t3.medium".into(),
            market: job_model::Market::OnDemand,
            on_demand_because: None,
        }
    }

    fn fake_worker() -> job_model::WorkerRun {
        job_model::WorkerRun {
            instance_id: "i-1".into(),
            instance_type: "t3.medium".into(),
            market: job_model::Market::OnDemand,
            on_demand_because: None,
            launched_at: Timestamp::now(),
        }
    }

    /// A provisioner whose listing fails; it records whether the grant sweep still ran.
    #[derive(Debug, Default)]
    struct ListFails {
        swept: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Provisioner for ListFails {
        fn plan(&self, _job: &Job) -> crate::provision::Plan {
            fake_plan()
        }
        async fn launch(
            &self,
            _job: &Job,
        ) -> Result<job_model::WorkerRun, crate::provision::ProvisionError> {
            Ok(fake_worker())
        }
        async fn terminate(
            &self,
            _job_id: &str,
        ) -> Result<Vec<String>, crate::provision::ProvisionError> {
            Ok(vec!["i-1".into()])
        }
        async fn terminate_instance(
            &self,
            _id: &str,
        ) -> Result<(), crate::provision::ProvisionError> {
            Ok(())
        }
        async fn list(
            &self,
        ) -> Result<Vec<crate::provision::Worker>, crate::provision::ProvisionError> {
            Err(crate::provision::ProvisionError::Config(
                "DescribeInstances denied".into(),
            ))
        }
        async fn sweep(
            &self,
            _now: Timestamp,
        ) -> Result<Vec<String>, crate::provision::ProvisionError> {
            self.swept.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(vec!["job-gone".into()])
        }
    }

    #[tokio::test]
    async fn one_failing_step_does_not_keep_the_others_from_running() {
        let dir = tempfile::tempdir().expect("dir");
        let store = job_model::store::sqlite::SqliteStore::open(&dir.path().join("jobs.db"))
            .expect("store");
        let now = Timestamp::now();
        let mut lost = job(JobStatus::Running, ago(now, 60 * MIN));
        lost.started_at = Some(ago(now, 60 * MIN));
        lost.heartbeat_at = Some(ago(now, 10 * MIN));
        lost.spec.options.max_attempts = Some(1);
        store.create(&lost, None).await.expect("create");
        let p = ListFails::default();
        let report = reap(&store, &p, &Policy::default(), now).await;
        // The job step did its work, the worker listing failed, the sweep ran anyway.
        assert_eq!(report.failed, vec![lost.job_id.clone()]);
        assert_eq!(report.grants_revoked, vec!["job-gone".to_owned()]);
        assert!(p.swept.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(
            report.failures[0].starts_with("list the workers: ")
                && report.failures[0].contains("DescribeInstances denied"),
            "{:?}",
            report.failures
        );
    }

    /// A provisioner whose instances were all reclaimed as spot capacity.
    #[derive(Debug)]
    struct Reclaimed;

    #[async_trait::async_trait]
    impl Provisioner for Reclaimed {
        fn plan(&self, _job: &Job) -> crate::provision::Plan {
            fake_plan()
        }
        async fn launch(
            &self,
            _job: &Job,
        ) -> Result<job_model::WorkerRun, crate::provision::ProvisionError> {
            Ok(fake_worker())
        }
        async fn terminate(
            &self,
            _job_id: &str,
        ) -> Result<Vec<String>, crate::provision::ProvisionError> {
            Ok(Vec::new())
        }
        async fn terminate_instance(
            &self,
            _id: &str,
        ) -> Result<(), crate::provision::ProvisionError> {
            Ok(())
        }
        async fn list(
            &self,
        ) -> Result<Vec<crate::provision::Worker>, crate::provision::ProvisionError> {
            Ok(Vec::new())
        }
        async fn why_gone(
            &self,
            id: &str,
        ) -> Result<Option<crate::provision::Gone>, crate::provision::ProvisionError> {
            Ok((id == "i-spot").then(|| {
                crate::provision::Gone::from_ec2_state_reason(Some(
                    "Server.SpotInstanceTermination",
                ))
            }))
        }
    }

    #[tokio::test]
    async fn a_lost_worker_is_replaced_until_the_attempts_run_out() {
        let dir = tempfile::tempdir().expect("dir");
        let store = job_model::store::sqlite::SqliteStore::open(&dir.path().join("jobs.db"))
            .expect("store");
        let now = Timestamp::now();
        let silent = |instance: &str| {
            let mut j = job(JobStatus::Running, ago(now, 60 * MIN));
            j.started_at = Some(ago(now, 60 * MIN));
            j.heartbeat_at = Some(ago(now, 10 * MIN));
            j.instance_id = Some(instance.into());
            j.progress = Some(job_model::Progress {
                phase: "data".into(),
                bytes: 42,
                bytes_total: 100,
                ..job_model::Progress::default()
            });
            j
        };
        let get = |id: &str| {
            let store = &store;
            let id = id.to_owned();
            async move { store.get(&id).await.expect("get").expect("job") }
        };
        let (spot, crashed) = (silent("i-spot"), silent("i-crashed"));
        store.create(&spot, None).await.expect("create");
        store.create(&crashed, None).await.expect("create");
        let report = reap(&store, &Reclaimed, &Policy::default(), now).await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(report.relaunched.len(), 2, "{report:?}");
        for (job, code) in [(&spot, "interrupted"), (&crashed, "heartbeat_lost")] {
            let j = get(&job.job_id).await;
            assert_eq!(j.status, JobStatus::Provisioning, "{j:?}");
            assert_eq!((j.attempt, j.instance_id.as_deref()), (2, Some("i-1")));
            let e = j.error.expect("why the worker before was lost");
            assert_eq!(e.code, code);
            assert!(
                e.message.starts_with("worker lost after 42 %: ")
                    && e.message.ends_with("resuming on attempt 2/3"),
                "{}",
                e.message
            );
            // The first claim's start stays: the job's time limit counts from there.
            assert_eq!(j.started_at, job.started_at);
        }
        let e = get(&spot.job_id).await.error.expect("error");
        assert!(
            e.message.contains("i-spot") && e.message.contains("Server.SpotInstanceTermination"),
            "{}",
            e.message
        );

        // On its last attempt a lost worker fails the job; one that replicates may have left
        // its slot on the source, and the record says how to find and drop it.
        let mut last = silent("i-crashed");
        last.attempt = 3;
        last.spec.options.sync = Some(job_model::SyncChoice::Auto);
        store.create(&last, None).await.expect("create");
        // A job its owner asked to stop gets no new worker either.
        let mut stopping = silent("i-crashed");
        stopping.cancel_requested_at = Some(ago(now, 1));
        store.create(&stopping, None).await.expect("create");
        let report = reap(&store, &Reclaimed, &Policy::default(), now).await;
        assert!(report.relaunched.is_empty(), "{report:?}");
        let j = get(&last.job_id).await;
        assert_eq!(j.status, JobStatus::Failed);
        let e = j.error.expect("error");
        assert_eq!(e.code, "heartbeat_lost");
        assert!(
            e.message.contains("attempt 3/3: no attempt left")
                && e.message.contains("replication slot")
                && e.message.contains("sync --stop"),
            "{}",
            e.message
        );
        assert_eq!(get(&stopping.job_id).await.status, JobStatus::Failed);

        // A worker that recorded its own interruption left the job pending for the next one:
        // the next pass starts it at once.
        let mut waiting = job(JobStatus::Pending, ago(now, 60 * MIN));
        waiting.attempt = 2;
        waiting.updated_at = ago(now, 5);
        store.create(&waiting, None).await.expect("create");
        let report = reap(&store, &Reclaimed, &Policy::default(), now).await;
        assert_eq!(report.relaunched, vec![waiting.job_id.clone()]);
        let j = get(&waiting.job_id).await;
        assert_eq!((j.status, j.attempt), (JobStatus::Provisioning, 2));

        // Between two workers: a cancel ends the job, and so does a next worker that could not
        // be started for longer than a pending job may wait. A pass working from a stale
        // listing (the job moved on since) leaves it alone.
        let mut cancelled = job(JobStatus::Pending, ago(now, 60 * MIN));
        cancelled.attempt = 2;
        cancelled.cancel_requested_at = Some(ago(now, 1));
        cancelled.updated_at = ago(now, 1);
        let mut stuck = job(JobStatus::Pending, ago(now, 60 * MIN));
        stuck.attempt = 2;
        stuck.updated_at = ago(now, 10 * MIN);
        for j in [&cancelled, &stuck] {
            store.create(j, None).await.expect("create");
        }
        let report = reap(&store, &Reclaimed, &Policy::default(), now).await;
        assert!(report.relaunched.is_empty(), "{report:?}");
        assert_eq!(get(&cancelled.job_id).await.status, JobStatus::Cancelled);
        let j = get(&stuck.job_id).await;
        assert_eq!(j.status, JobStatus::Failed);
        assert_eq!(
            j.error.map(|e| e.code).as_deref(),
            Some("never_provisioned")
        );
        let mut stale = job(JobStatus::Pending, ago(now, 60 * MIN));
        stale.attempt = 2;
        stale.updated_at = ago(now, 1);
        store.create(&stale, None).await.expect("create");
        let mut relaunched = Report::default();
        let mut seen = stale.clone();
        seen.version -= 1;
        relaunch(&store, &Reclaimed, &seen, &mut relaunched).await;
        assert!(
            relaunched.relaunched.is_empty() && relaunched.terminated.is_empty(),
            "{relaunched:?}"
        );
        assert_eq!(get(&stale.job_id).await.status, JobStatus::Pending);
    }

    #[test]
    fn ec2_state_reasons_tell_a_spot_reclaim_from_the_rest() {
        use crate::provision::Gone;
        for code in [
            "Server.SpotInstanceTermination",
            "Server.SpotInstanceShutdown",
        ] {
            assert!(matches!(
                Gone::from_ec2_state_reason(Some(code)),
                Gone::SpotReclaimed { .. }
            ));
        }
        for code in [
            Some("Client.UserInitiatedShutdown"),
            Some("Client.InstanceInitiatedShutdown"),
            Some("Server.InternalError"),
            None,
        ] {
            assert!(matches!(
                Gone::from_ec2_state_reason(code),
                Gone::Other { .. }
            ));
        }
    }

    #[test]
    fn verdicts_follow_the_policy() {
        let p = Policy::default();
        let now = Timestamp::now();
        let mut r = job(JobStatus::Running, ago(now, 60 * MIN));
        r.started_at = Some(ago(now, 60 * MIN));
        r.heartbeat_at = Some(ago(now, MIN));
        assert_eq!(verdict(&r, &p, now), None);
        r.heartbeat_at = Some(ago(now, 6 * MIN));
        assert_eq!(
            verdict(&r, &p, now).map(|v| v.1.code),
            Some("heartbeat_lost".into())
        );
        r.heartbeat_at = Some(ago(now, MIN));
        r.spec.options.timeout_seconds = Some(30 * MIN);
        assert_eq!(verdict(&r, &p, now).map(|v| v.0), Some(JobStatus::TimedOut));
        r.spec.options.timeout_seconds = None;
        r.cancel_requested_at = Some(ago(now, MIN));
        assert_eq!(verdict(&r, &p, now), None, "still within the grace");
        r.cancel_requested_at = Some(ago(now, 3 * MIN));
        assert_eq!(
            verdict(&r, &p, now).map(|v| v.0),
            Some(JobStatus::Cancelled)
        );

        let mut pr = job(JobStatus::Provisioning, ago(now, 20 * MIN));
        assert_eq!(
            verdict(&pr, &p, now).map(|v| v.1.code),
            Some("worker_never_started".into())
        );
        pr.updated_at = ago(now, MIN);
        assert_eq!(verdict(&pr, &p, now), None);

        let pe = job(JobStatus::Pending, ago(now, 10 * MIN));
        assert_eq!(
            verdict(&pe, &p, now).map(|v| v.1.code),
            Some("never_provisioned".into())
        );
        let done = job(JobStatus::Completed, ago(now, 100 * MIN));
        assert_eq!(verdict(&done, &p, now), None);
    }
}

//! The reaper: ends jobs whose worker went quiet, never started or ran too long, and
//! terminates workers whose job is over. Run by a scheduled Lambda on AWS and by an interval
//! task in the local server; running it twice at once is safe, because every change is a
//! conditional write that one of them loses.

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
    /// Worker instances terminated.
    pub terminated: Vec<String>,
    /// Jobs whose finished workers' KMS grants were revoked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants_revoked: Vec<String>,
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

/// One pass over the active jobs and the live workers.
///
/// # Errors
/// When listing jobs or workers fails; a job another actor changed meanwhile is skipped.
pub async fn reap(
    store: &dyn JobStore,
    provisioner: &dyn Provisioner,
    policy: &Policy,
    now: Timestamp,
) -> Result<Report, ReapError> {
    let mut report = Report::default();
    let mut active: HashMap<String, Job> = HashMap::new();
    for status in JobStatus::ACTIVE {
        for job in all_in(store, status).await? {
            let Some((to, error)) = verdict(&job, policy, now) else {
                active.insert(job.job_id.clone(), job);
                continue;
            };
            let change = Change::to(to, now).error(error);
            match store
                .transition(&job.job_id, Expect::job(&job), change)
                .await
            {
                Ok(_) => {
                    tracing::warn!(job_id = %job.job_id, from = %job.status, %to, "reaped job");
                    match to {
                        JobStatus::Failed => report.failed.push(job.job_id.clone()),
                        JobStatus::TimedOut => report.timed_out.push(job.job_id.clone()),
                        _ => report.cancelled.push(job.job_id.clone()),
                    }
                    report
                        .terminated
                        .extend(provisioner.terminate(&job.job_id).await?);
                }
                // It moved on (a heartbeat, a claim, a finish): alive after all.
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Workers whose job is over or unknown.
    for w in provisioner.list().await? {
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
            report.terminated.push(w.instance_id);
        }
    }
    report.grants_revoked = provisioner.sweep(now).await?;
    Ok(report)
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

//! The `Provisioner` port: starts a worker for a job and makes it go away.
//!
//! Two adapters: [`ec2::Ec2Provisioner`] launches an instance from the launch template (on
//! AWS, or moto in tests) and [`local::LocalProvisioner`] starts a worker process on this
//! machine.

pub mod ec2;
pub mod grant;
pub mod local;

use async_trait::async_trait;
use job_model::{Job, Market, Timestamp, WorkerRun};

/// Tag on every instance this system starts; scoping for termination and the reaper.
pub const MANAGED_BY_TAG: &str = "ManagedBy";
/// The value of [`MANAGED_BY_TAG`].
pub const MANAGED_BY_VALUE: &str = "seren-replication-system";
/// Tag holding the job id.
pub const JOB_ID_TAG: &str = "JobId";

/// What provisioning can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// No capacity (after every fallback): trying later may help.
    #[error("no capacity for a worker: {0}")]
    Capacity(String),
    /// The configuration is wrong (launch template, program, permissions).
    #[error("worker configuration: {0}")]
    Config(String),
    /// The backend failed.
    #[error("provisioner: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// Whether trying again may help.
        retryable: bool,
    },
}

/// A worker the provisioner knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Instance id (`i-…`) or `local-<pid>`.
    pub instance_id: String,
    /// The job it was started for (its `JobId` tag), when it has one.
    pub job_id: Option<String>,
    /// When it was started.
    pub launched_at: Option<Timestamp>,
    /// Its instance type (`local` for a local worker), when the provider says.
    pub instance_type: Option<String>,
    /// How it was bought, when the provider says.
    pub market: Option<Market>,
}

/// Why an instance went away, as far as its provider says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// The provider reclaimed spot capacity (EC2 `Server.SpotInstanceTermination` or
    /// `Server.SpotInstanceShutdown`): the copy was interrupted, not broken, and can run again.
    SpotReclaimed {
        /// The provider's reason, as it gave it.
        reason: String,
    },
    /// Any other end (a user or the reaper terminated it, it powered off, hardware failed),
    /// with the provider's reason when it gave one.
    Other {
        /// The provider's reason, if any.
        reason: Option<String>,
    },
}

impl Gone {
    /// Read an EC2 instance's `StateReason` code.
    pub fn from_ec2_state_reason(code: Option<&str>) -> Self {
        match code {
            Some(c @ ("Server.SpotInstanceTermination" | "Server.SpotInstanceShutdown")) => {
                Self::SpotReclaimed {
                    reason: c.to_owned(),
                }
            }
            other => Self::Other {
                reason: other.map(str::to_owned),
            },
        }
    }
}

/// What a worker for a job would be, before it is asked for: the dry run's estimate and the
/// launch read this one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The instance type ([`instance_type_for`], or `local`).
    pub instance_type: String,
    /// How it is bought first (a spot refusal may still end on on-demand).
    pub market: Market,
    /// Why on-demand when the deployment asks for spot first.
    pub on_demand_because: Option<String>,
}

/// Starts and stops workers.
#[async_trait]
pub trait Provisioner: Send + Sync + std::fmt::Debug {
    /// What [`Provisioner::launch`] would ask for `job` now.
    fn plan(&self, job: &Job) -> Plan;

    /// Start a worker for `job` and say which (instance, type, market, launch time).
    /// Idempotent per job: when a live worker for the job exists already, it is returned and
    /// nothing new starts.
    ///
    /// # Errors
    /// [`ProvisionError::Capacity`] when no worker can be had now, others when the
    /// configuration or backend fails.
    async fn launch(&self, job: &Job) -> Result<WorkerRun, ProvisionError>;

    /// Stop every worker of `job_id` (only workers this system started); returns the ids it
    /// asked to stop. Idempotent.
    ///
    /// # Errors
    /// When the backend fails.
    async fn terminate(&self, job_id: &str) -> Result<Vec<String>, ProvisionError>;

    /// Stop one worker by id, if this system started it. Idempotent.
    ///
    /// # Errors
    /// When the backend fails.
    async fn terminate_instance(&self, instance_id: &str) -> Result<(), ProvisionError>;

    /// Every live worker this system started.
    ///
    /// # Errors
    /// When the backend fails.
    async fn list(&self) -> Result<Vec<Worker>, ProvisionError>;

    /// Release what workers that are gone still hold (EC2: their KMS grants); returns the job
    /// ids released. Called by the reaper after it terminated what it had to.
    ///
    /// # Errors
    /// When the backend fails.
    async fn sweep(&self, now: Timestamp) -> Result<Vec<String>, ProvisionError> {
        let _ = now;
        Ok(Vec::new())
    }

    /// Whether `instance_id` has ended for good: nothing of it runs any more (EC2: terminated
    /// or unknown; a shutting-down instance may still be running its worker's clean-up; local:
    /// the process has exited). The reaper starts a job's next worker only then, so that two
    /// workers of one job never work on its databases at once.
    ///
    /// # Errors
    /// When the backend fails.
    async fn is_gone(&self, instance_id: &str) -> Result<bool, ProvisionError> {
        let _ = instance_id;
        Ok(true)
    }

    /// Why `instance_id` is gone, when it is gone and the provider still knows it (EC2 keeps
    /// terminated instances visible for about an hour); `None` when it is alive, unknown or
    /// the provider cannot say. The reaper asks before it records a lost heartbeat.
    ///
    /// # Errors
    /// When the backend fails.
    async fn why_gone(&self, instance_id: &str) -> Result<Option<Gone>, ProvisionError> {
        let _ = instance_id;
        Ok(None)
    }
}

/// Start a worker for `job`, which is `pending` (new, or after its worker was lost), and
/// record it (`provisioning`, with the instance, added to the job's workers); when no worker can be started the job is
/// `failed` with the reason (`no_capacity`, `provisioning_failed`). A job that changed
/// meanwhile (cancelled while launching) keeps its change and the worker is stopped again.
/// Returns the job's status afterwards.
///
/// # Errors
/// When the store fails.
pub async fn start_worker(
    store: &dyn job_model::JobStore,
    provisioner: &dyn Provisioner,
    job: &Job,
) -> Result<job_model::JobStatus, job_model::StoreError> {
    use job_model::{Change, ErrorBody, Expect, JobStatus, StoreError};
    let change = match provisioner.launch(job).await {
        Ok(worker) => Change::to(JobStatus::Provisioning, Timestamp::now()).worker(worker),
        Err(e) => {
            tracing::warn!(job_id = %job.job_id, error = %e, "provisioning failed");
            let code = match e {
                ProvisionError::Capacity(_) => "no_capacity",
                _ => "provisioning_failed",
            };
            Change::to(JobStatus::Failed, Timestamp::now()).error(ErrorBody::new(
                code,
                format!("could not start a worker: {e}"),
            ))
        }
    };
    let launched = change.to == JobStatus::Provisioning;
    match store
        .transition(&job.job_id, Expect::job(job), change)
        .await
    {
        Ok(j) => Ok(j.status),
        Err(StoreError::Conflict { current, .. }) => {
            // Ended while launching (cancelled, reaped): the worker must not live on. A job
            // that merely moved on (another pass recorded the same worker: launches are
            // idempotent per job and attempt) keeps it.
            if launched && current.is_terminal() {
                if let Err(e) = provisioner.terminate(&job.job_id).await {
                    tracing::warn!(job_id = %job.job_id, error = %e, "terminate after conflict");
                }
            }
            Ok(current)
        }
        Err(e) => Err(e),
    }
}

/// The instance type for a job: the one asked for, else the operator's default, else a tier
/// by the source's size (t3.medium under 10 GiB, c5.xlarge under 100 GiB, c5.2xlarge under
/// 500 GiB, c5.4xlarge above; c5.2xlarge when the size is unknown).
pub fn instance_type_for(job: &Job, operator_default: Option<&str>) -> String {
    if let Some(t) = &job.spec.options.instance_type {
        return t.clone();
    }
    if let Some(t) = operator_default {
        return t.to_owned();
    }
    const GIB: u64 = 1 << 30;
    match job.spec.options.source_size_bytes {
        Some(b) if b < 10 * GIB => "t3.medium",
        Some(b) if b < 100 * GIB => "c5.xlarge",
        Some(b) if b < 500 * GIB => "c5.2xlarge",
        Some(_) => "c5.4xlarge",
        None => "c5.2xlarge",
    }
    .to_owned()
}

/// A job with `options`, for this module's tests.
#[cfg(test)]
pub(crate) fn test_job(options: job_model::Options) -> Job {
    use job_model::{Command, JobSpec, Owner};
    Job::new(
        Job::new_id(),
        Owner("key-x".into()),
        JobSpec {
            command: Command::Init,
            filter: Default::default(),
            options,
        },
        (vec![], vec![]),
        (String::new(), String::new()),
        None,
        Timestamp::now(),
        job_model::job::DEFAULT_RETENTION,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use job_model::Options;

    #[test]
    fn instance_type_follows_request_then_operator_then_size() {
        let sized = |gib: u64| {
            test_job(Options {
                source_size_bytes: Some(gib << 30),
                ..Options::default()
            })
        };
        assert_eq!(instance_type_for(&sized(1), None), "t3.medium");
        assert_eq!(instance_type_for(&sized(50), None), "c5.xlarge");
        assert_eq!(instance_type_for(&sized(200), None), "c5.2xlarge");
        assert_eq!(instance_type_for(&sized(2000), None), "c5.4xlarge");
        assert_eq!(
            instance_type_for(&test_job(Options::default()), None),
            "c5.2xlarge"
        );
        assert_eq!(instance_type_for(&sized(1), Some("m6i.large")), "m6i.large");
        let asked = test_job(Options {
            instance_type: Some("r6i.xlarge".into()),
            source_size_bytes: Some(1),
            ..Options::default()
        });
        assert_eq!(instance_type_for(&asked, Some("m6i.large")), "r6i.xlarge");
    }
}

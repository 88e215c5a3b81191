//! The `JobStore` port: where jobs live, with every change a conditional write.
//!
//! Two adapters: [`sqlite::SqliteStore`] (feature `local`; one file, safe for several processes)
//! and [`dynamodb::DynamoStore`] (feature `aws`; the `replication-jobs` table). Both pass the
//! same contract tests (`tests/store_contract.rs`).

#[cfg(feature = "aws")]
pub mod dynamodb;
#[cfg(any(feature = "aws", feature = "local"))]
pub mod fault;
#[cfg(any(feature = "aws", feature = "local"))]
pub mod retry;
#[cfg(feature = "local")]
pub mod sqlite;

use async_trait::async_trait;
use base64::Engine as _;

use crate::job::{ErrorBody, Job, Owner, Progress, Timestamp};
use crate::status::JobStatus;

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the job is not in the expected status or version any more.
    #[error("job {job_id} changed meanwhile: it is {current} (version {version})")]
    Conflict {
        /// The job.
        job_id: String,
        /// Its status now.
        current: JobStatus,
        /// Its version now.
        version: u64,
    },
    /// The job does not exist.
    #[error("job {0} does not exist")]
    NotFound(String),
    /// The change is not one the state machine allows.
    #[error("a {from} job cannot become {to}")]
    Illegal {
        /// Status now.
        from: JobStatus,
        /// Status asked for.
        to: JobStatus,
    },
    /// `max_concurrent_jobs` jobs are active already.
    #[error("{limit} jobs are active already, the most this deployment runs at once")]
    LimitReached {
        /// The limit.
        limit: u32,
    },
    /// A cursor that this store did not hand out.
    #[error("the cursor is not one this API returned; start the listing again without it")]
    BadCursor,
    /// A stored record that does not decode.
    #[error("job record {job_id} is unreadable: {reason}")]
    Corrupt {
        /// The record's key.
        job_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed (network, throttling, disk, lock timeout).
    #[error("job store: {message}")]
    Backend {
        /// What failed, never containing a secret.
        message: String,
        /// Whether trying again may help (throttling, timeouts, busy database).
        retryable: bool,
    },
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Backend {
                retryable: true,
                ..
            }
        )
    }
}

/// The outcome of [`JobStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The job was stored.
    New(Job),
    /// A job with the same owner and idempotency key existed; it is returned unchanged.
    Existing(Job),
}

impl Created {
    /// The job either way.
    pub fn job(&self) -> &Job {
        match self {
            Self::New(j) | Self::Existing(j) => j,
        }
    }
}

/// The state a conditional write expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// The status it must have.
    pub status: JobStatus,
    /// The version it must have; `None` to check the status only.
    pub version: Option<u64>,
    /// The worker it must be held by (`instance_id`); `None` for any.
    pub instance_id: Option<String>,
}

impl Expect {
    /// Expect exactly what `job` shows.
    pub fn job(job: &Job) -> Self {
        Self {
            status: job.status,
            version: Some(job.version),
            instance_id: None,
        }
    }

    /// Expect a status, whatever the version.
    pub fn status(status: JobStatus) -> Self {
        Self {
            status,
            version: None,
            instance_id: None,
        }
    }

    /// And held by this worker: a worker's own outcome must not land on a job that a later
    /// attempt's worker holds now (the earlier one was given up for lost, then wrote late).
    pub fn held_by(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = Some(instance_id.into());
        self
    }
}

/// A status change and what comes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new status.
    pub to: JobStatus,
    /// When (also `started_at` when `to` is `running`, `finished_at` when terminal).
    pub at: Timestamp,
    /// The worker's instance id (set when provisioning or claiming).
    pub instance_id: Option<String>,
    /// Why, when `to` is `failed`, `timed_out` or `cancelled`.
    pub error: Option<ErrorBody>,
    /// Final progress.
    pub progress: Option<Progress>,
    /// What a `verify` or `validate` job found.
    pub result: Option<crate::report::JobResult>,
    /// A new attempt's number (with `to` = `pending`: another worker will resume the job).
    pub attempt: Option<u32>,
    /// A worker started for the job (with `to` = `provisioning`), appended to `workers`.
    pub worker: Option<crate::job::WorkerRun>,
}

impl Change {
    /// A bare change to `to` at `at`.
    pub fn to(to: JobStatus, at: Timestamp) -> Self {
        Self {
            to,
            at,
            instance_id: None,
            error: None,
            progress: None,
            result: None,
            attempt: None,
            worker: None,
        }
    }

    /// The next attempt: `running → pending` with `attempt` counted on, and why the attempt
    /// before ended in `error` (the job is not failed: `error` says what the new worker
    /// resumes after).
    pub fn retry(at: Timestamp, attempt: u32, why: ErrorBody) -> Self {
        let mut c = Self::to(JobStatus::Pending, at).error(why);
        c.attempt = Some(attempt);
        c
    }

    /// With an instance id.
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// With the worker just started for the job: its instance id becomes the job's, and the
    /// worker is added to the job's list.
    pub fn worker(mut self, w: crate::job::WorkerRun) -> Self {
        self.instance_id = Some(w.instance_id.clone());
        self.worker = Some(w);
        self
    }

    /// With an error.
    pub fn error(mut self, e: ErrorBody) -> Self {
        self.error = Some(e);
        self
    }

    /// With progress.
    pub fn progress(mut self, p: Progress) -> Self {
        self.progress = Some(p);
        self
    }

    /// With a `verify` or `validate` report.
    pub fn result(mut self, r: crate::report::JobResult) -> Self {
        self.result = Some(r);
        self
    }
}

/// A position in a listing, newest first: the last job of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Its `created_at`.
    pub created_at: Timestamp,
    /// Its id (ties on `created_at`).
    pub job_id: String,
}

impl Cursor {
    /// The cursor after `job`.
    pub fn after(job: &Job) -> Self {
        Self {
            created_at: job.created_at,
            job_id: job.job_id.clone(),
        }
    }

    /// The opaque text handed to clients (URL-safe base64).
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}|{}",
            self.created_at.to_rfc3339(),
            self.job_id
        ))
    }

    /// Read a client's cursor.
    ///
    /// # Errors
    /// [`StoreError::BadCursor`] for anything [`Cursor::encode`] did not make.
    pub fn decode(text: &str) -> Result<Self, StoreError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| StoreError::BadCursor)?;
        let s = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
        let (at, id) = s.split_once('|').ok_or(StoreError::BadCursor)?;
        if !crate::job::is_valid_job_id(id) {
            return Err(StoreError::BadCursor);
        }
        Ok(Self {
            created_at: Timestamp::parse(at).map_err(|_| StoreError::BadCursor)?,
            job_id: id.to_owned(),
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Jobs, newest first.
    pub jobs: Vec<Job>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Where jobs live.
///
/// Every write is conditional; no method overwrites a change it has not seen. Timestamps come
/// from the caller so that logic above the store can be tested at any time it likes.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Store a new `pending` job.
    ///
    /// Atomic with two checks: when `job.idempotency_key` is set and the same owner already
    /// used it, nothing is written and the earlier job is returned as [`Created::Existing`];
    /// when `limit` is set and that many jobs are active (pending, provisioning or running),
    /// nothing is written and the answer is [`StoreError::LimitReached`].
    ///
    /// # Errors
    /// [`StoreError::LimitReached`], or a backend failure.
    async fn create(&self, job: &Job, limit: Option<u32>) -> Result<Created, StoreError>;

    /// The job with this id (expired records included until the backend deletes them).
    ///
    /// # Errors
    /// A backend failure or a record that does not decode.
    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError>;

    /// One owner's jobs, newest first, optionally of one status, `limit` at most, starting
    /// after `cursor`. Never scans the whole table.
    ///
    /// # Errors
    /// A backend failure.
    async fn list_by_owner(
        &self,
        owner: &Owner,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError>;

    /// Every job in one status, oldest first (for the reaper), `limit` at most.
    ///
    /// # Errors
    /// A backend failure.
    async fn list_by_status(
        &self,
        status: JobStatus,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError>;

    /// Move a job to `change.to` if it is still as `expect` says: a conditional write on the
    /// status (and the version when given). Returns the job as written.
    ///
    /// # Errors
    /// [`StoreError::Illegal`] when the state machine forbids the change (checked before any
    /// write), [`StoreError::Conflict`] when another actor changed the job first,
    /// [`StoreError::NotFound`].
    async fn transition(
        &self,
        job_id: &str,
        expect: Expect,
        change: Change,
    ) -> Result<Job, StoreError>;

    /// A worker's sign of life: sets `heartbeat_at` (and `progress` when given) if the job is
    /// `running` on `instance_id`. Returns the job, so the worker sees a cancel request.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer running on that instance.
    async fn heartbeat(
        &self,
        job_id: &str,
        instance_id: &str,
        progress: Option<&Progress>,
        at: Timestamp,
    ) -> Result<Job, StoreError>;

    /// Record that the owner wants an active job stopped (`cancel_requested_at`), once;
    /// returns the job. The worker, or the coordinator for a job not yet running, then moves
    /// it to `cancelled`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is already finished.
    async fn request_cancel(&self, job_id: &str, at: Timestamp) -> Result<Job, StoreError>;

    /// Bring a stored count of active jobs back to the jobs really active (pending,
    /// provisioning, running), for stores that keep such a count; returns what was corrected.
    /// A count that changed within the last `quiet` is left alone: the jobs behind that change
    /// may not be visible to a listing yet. Stores that count live (SQLite) have nothing to do.
    ///
    /// # Errors
    /// A backend failure.
    async fn reconcile_active(
        &self,
        quiet: std::time::Duration,
    ) -> Result<Option<ReconciledCount>, StoreError> {
        let _ = quiet;
        Ok(None)
    }
}

/// What [`JobStore::reconcile_active`] corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReconciledCount {
    /// The stored count as it was.
    pub was: i64,
    /// The jobs really active, as it is now.
    pub now: i64,
}

/// Check the state machine before writing.
#[cfg_attr(not(any(feature = "local", feature = "aws")), allow(dead_code))]
pub(crate) fn check_legal(from: JobStatus, to: JobStatus) -> Result<(), StoreError> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(StoreError::Illegal { from, to })
    }
}

/// Apply `change` to a copy of `job` (the in-memory half of a transition, shared by stores
/// that read-modify-write under a lock).
#[cfg_attr(not(feature = "local"), allow(dead_code))]
pub(crate) fn apply(job: &Job, change: &Change) -> Job {
    let mut j = job.clone();
    j.status = change.to;
    j.updated_at = change.at;
    j.version += 1;
    if change.to == JobStatus::Running {
        // The first claim's: a later attempt's worker resumes the same job.
        j.started_at = j.started_at.or(Some(change.at));
        j.heartbeat_at = Some(change.at);
    }
    if change.to.is_terminal() {
        j.finished_at = Some(change.at);
        // Nothing needs the sealed URLs once the job has ended.
        j.source_secret.clear();
        j.target_secret.clear();
    }
    if let Some(i) = &change.instance_id {
        j.instance_id = Some(i.clone());
    }
    if let Some(e) = &change.error {
        j.error = Some(e.clone());
    }
    if let Some(p) = &change.progress {
        j.progress = Some(p.clone());
    }
    if let Some(r) = &change.result {
        j.result = Some(r.clone());
    }
    if let Some(a) = change.attempt {
        j.attempt = a;
    }
    if let Some(w) = &change.worker {
        j.workers.push(w.clone());
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_text_is_refused() {
        let c = Cursor {
            created_at: Timestamp::from_unix_millis(1_795_000_000_123),
            job_id: crate::Job::new_id(),
        };
        assert_eq!(Cursor::decode(&c.encode()).expect("round trip"), c);
        for bad in ["", "!!!", "bm9wZQ", "MjAyNi0xMS0yN1QyMjowNzoyMi4xMjNafHg"] {
            assert!(
                matches!(Cursor::decode(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
    }
}

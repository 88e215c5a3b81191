//! Trying a store call again when the backend says it may help, and never twice when it helped.
//!
//! [`Backoff`] is the one retry policy of the control plane: exponential delays with full jitter
//! (a random pause between zero and the current ceiling, so that a burst of callers that collided
//! once does not collide again in step) until a deadline. [`Retrying`] applies it to every call of
//! a [`JobStore`]; only errors the store marks retryable ([`StoreError::is_retryable`]: throttling,
//! timeouts, a DynamoDB transaction that conflicted with another) are tried again.
//!
//! A retry after an error whose outcome is unknown (a timeout after the request was sent) must not
//! do the work twice: before a create or a transition is sent again, the job is read back, and if
//! the earlier attempt did commit, its result is returned instead.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Change, Created, Cursor, Expect, JobStore, Page, ReconciledCount, StoreError};
use crate::job::{Job, Owner, Progress, Timestamp};
use crate::status::JobStatus;

/// How long, and how patiently, to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first pause.
    pub first: Duration,
    /// The largest ceiling any pause reaches.
    pub max: Duration,
    /// No new attempt starts after this much time since the first.
    pub deadline: Duration,
}

impl Backoff {
    /// For a request someone is waiting on (the API, within API Gateway's 29 s): about 8 s.
    pub const REQUEST: Self = Self {
        first: Duration::from_millis(25),
        max: Duration::from_secs(1),
        deadline: Duration::from_secs(8),
    };

    /// For the write that records how a job ended: a worker keeps trying for 4 minutes before
    /// it gives up and powers off, less than the reaper's 5 minutes without a heartbeat after
    /// which it would record `heartbeat_lost` itself.
    pub const OUTCOME: Self = Self {
        first: Duration::from_millis(200),
        max: Duration::from_secs(20),
        deadline: Duration::from_secs(240),
    };

    /// No retry at all.
    pub const NEVER: Self = Self {
        first: Duration::ZERO,
        max: Duration::ZERO,
        deadline: Duration::ZERO,
    };

    /// A schedule of pauses that starts now.
    pub fn start(self) -> Schedule {
        Schedule {
            policy: self,
            started: tokio::time::Instant::now(),
            ceiling: self.first,
            attempt: 0,
        }
    }

    /// Run `op` until it succeeds, fails with an error `retryable` refuses, or the deadline
    /// passes; returns its last result.
    ///
    /// # Errors
    /// The last error of `op`.
    pub async fn run<T, E, F, Fut>(
        self,
        what: &str,
        retryable: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display + Sync,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut schedule = self.start();
        loop {
            match op().await {
                Err(e) if retryable(&e) => {
                    if !schedule.pause(what, &e).await {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }
}

/// The pauses of one retried call.
#[derive(Debug)]
pub struct Schedule {
    policy: Backoff,
    started: tokio::time::Instant,
    ceiling: Duration,
    attempt: u32,
}

impl Schedule {
    /// The next pause, or `None` when the deadline leaves no room for another attempt.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let elapsed = self.started.elapsed();
        if elapsed >= self.policy.deadline {
            return None;
        }
        let ceiling = self.ceiling.min(self.policy.max);
        self.ceiling = self.ceiling.saturating_mul(2);
        self.attempt += 1;
        // Full jitter: anywhere in [0, ceiling].
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let pause = Duration::from_millis(fastrand::u64(0..=millis));
        Some(pause.min(self.policy.deadline - elapsed))
    }

    /// Log why, then sleep until the next attempt; `false` when there is none.
    pub async fn pause(&mut self, what: &str, error: &(dyn std::fmt::Display + Sync)) -> bool {
        match self.next_pause() {
            Some(p) => {
                tracing::warn!(%error, attempt = self.attempt, retry_in_ms = p.as_millis() as u64, "{what} failed; trying again");
                tokio::time::sleep(p).await;
                true
            }
            None => {
                tracing::error!(%error, attempts = self.attempt + 1, deadline_secs = self.policy.deadline.as_secs(), "{what} failed; giving up");
                false
            }
        }
    }
}

/// A [`JobStore`] whose calls are retried under one [`Backoff`].
#[derive(Debug, Clone)]
pub struct Retrying {
    inner: Arc<dyn JobStore>,
    backoff: Backoff,
}

impl Retrying {
    /// `inner`, retried under `backoff`.
    pub fn new(inner: Arc<dyn JobStore>, backoff: Backoff) -> Self {
        Self { inner, backoff }
    }

    /// As an `Arc<dyn JobStore>`.
    pub fn shared(inner: Arc<dyn JobStore>, backoff: Backoff) -> Arc<dyn JobStore> {
        Arc::new(Self::new(inner, backoff))
    }
}

#[async_trait]
impl JobStore for Retrying {
    async fn create(&self, job: &Job, limit: Option<u32>) -> Result<Created, StoreError> {
        let mut schedule = self.backoff.start();
        let mut unsure = false;
        loop {
            if unsure {
                // The last attempt may have committed: a job with this (random, fresh) id can
                // only be this one.
                if let Ok(Some(stored)) = self.inner.get(&job.job_id).await {
                    return Ok(Created::New(stored));
                }
            }
            match self.inner.create(job, limit).await {
                Err(e) if e.is_retryable() => {
                    if !schedule.pause("storing a new job", &e).await {
                        return Err(e);
                    }
                    unsure = true;
                }
                // Found under its own idempotency key: this create's earlier attempt (the
                // backend's own retry, or ours) stored it.
                Ok(Created::Existing(j)) if j.job_id == job.job_id => return Ok(Created::New(j)),
                other => return other,
            }
        }
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        self.backoff
            .run("reading a job", StoreError::is_retryable, || {
                self.inner.get(job_id)
            })
            .await
    }

    async fn list_by_owner(
        &self,
        owner: &Owner,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        self.backoff
            .run("listing jobs", StoreError::is_retryable, || {
                self.inner.list_by_owner(owner, status, limit, cursor)
            })
            .await
    }

    async fn list_by_status(
        &self,
        status: JobStatus,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        self.backoff
            .run("listing jobs", StoreError::is_retryable, || {
                self.inner.list_by_status(status, limit, cursor)
            })
            .await
    }

    async fn transition(
        &self,
        job_id: &str,
        expect: Expect,
        change: Change,
    ) -> Result<Job, StoreError> {
        let mut schedule = self.backoff.start();
        let mut unsure = false;
        loop {
            if unsure {
                if let Ok(Some(j)) = self.inner.get(job_id).await {
                    if applied(&j, &change) {
                        return Ok(j);
                    }
                }
            }
            match self
                .inner
                .transition(job_id, expect.clone(), change.clone())
                .await
            {
                // A conflict may be this very change, committed by an attempt whose answer was
                // lost (the backend's SDK retries on its own, below this layer): look before
                // reporting that someone else got there first.
                Err(StoreError::Conflict {
                    current, version, ..
                }) if current == change.to => {
                    return match self.inner.get(job_id).await {
                        Ok(Some(j)) if applied(&j, &change) => Ok(j),
                        _ => Err(StoreError::Conflict {
                            job_id: job_id.to_owned(),
                            current,
                            version,
                        }),
                    };
                }
                Err(e) if e.is_retryable() => {
                    if !schedule
                        .pause(&format!("recording job {job_id} as {}", change.to), &e)
                        .await
                    {
                        return Err(e);
                    }
                    unsure = true;
                }
                other => return other,
            }
        }
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        instance_id: &str,
        progress: Option<&Progress>,
        at: Timestamp,
    ) -> Result<Job, StoreError> {
        // Setting the same heartbeat twice is harmless.
        self.backoff
            .run("a heartbeat", StoreError::is_retryable, || {
                self.inner.heartbeat(job_id, instance_id, progress, at)
            })
            .await
    }

    async fn request_cancel(&self, job_id: &str, at: Timestamp) -> Result<Job, StoreError> {
        // Idempotent: the first request's time is kept.
        self.backoff
            .run("a cancel request", StoreError::is_retryable, || {
                self.inner.request_cancel(job_id, at)
            })
            .await
    }

    async fn reconcile_active(
        &self,
        quiet: Duration,
    ) -> Result<Option<ReconciledCount>, StoreError> {
        self.backoff
            .run(
                "reconciling the active-job count",
                StoreError::is_retryable,
                || self.inner.reconcile_active(quiet),
            )
            .await
    }
}

/// Whether `j` shows `change` applied: its status and the change's own time (`updated_at`, or
/// `finished_at` for an end, which nothing moves afterwards). Not the instance id: a worker
/// restarted on the same instance must see the earlier process's claim as a conflict, to
/// resume what that process left.
fn applied(j: &Job, change: &Change) -> bool {
    j.status == change.to
        && (j.updated_at == change.at
            || (change.to.is_terminal() && j.finished_at == Some(change.at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_are_jittered_below_a_growing_ceiling_and_stop_at_the_deadline() {
        let policy = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
        };
        let mut s = policy.start();
        let mut ceilings = vec![];
        let mut total = Duration::ZERO;
        while let Some(p) = s.next_pause() {
            ceilings.push(p);
            total += p;
            tokio::time::advance(p.max(Duration::from_millis(1))).await;
            assert!(ceilings.len() < 10_000, "never ends");
        }
        assert!(ceilings[0] <= Duration::from_millis(100));
        assert!(ceilings.iter().all(|p| *p <= Duration::from_secs(1)));
        assert!(total <= Duration::from_secs(5));
        // Not all the same: jitter.
        assert!(ceilings.windows(2).any(|w| w[0] != w[1]));
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_on_success_on_a_final_error_and_at_the_deadline() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let r: Result<u32, String> = Backoff::REQUEST
            .run(
                "t",
                |_| true,
                || async {
                    let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n < 3 {
                        Err("busy".to_owned())
                    } else {
                        Ok(n)
                    }
                },
            )
            .await;
        assert_eq!(r, Ok(3));
        let r: Result<(), String> = Backoff::REQUEST
            .run(
                "t",
                |e: &String| e != "final",
                || async { Err("final".into()) },
            )
            .await;
        assert_eq!(r, Err("final".into()));
        let started = tokio::time::Instant::now();
        let r: Result<(), String> = Backoff::REQUEST
            .run("t", |_| true, || async { Err("busy".into()) })
            .await;
        assert!(r.is_err());
        assert!(started.elapsed() <= Backoff::REQUEST.deadline);
    }
}

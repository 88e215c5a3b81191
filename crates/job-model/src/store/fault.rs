//! A [`JobStore`] that fails on purpose, for tests of what the control plane does when its
//! store does: DynamoDB's transaction conflicts and throttling, and a request that committed but
//! whose answer was lost, none of which moto or SQLite produce on their own.
//!
//! Each rule names the calls it applies to and how they fail: before the call reaches the
//! store (nothing written, like a cancelled transaction) or after (written, answer lost, like a
//! timeout). Random rules use a seeded generator, so a failing run can be repeated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Change, Created, Cursor, Expect, JobStore, Page, ReconciledCount, StoreError};
use crate::job::{Job, Owner, Progress, Timestamp};
use crate::status::JobStatus;

/// Which calls a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`JobStore::create`].
    Create,
    /// [`JobStore::transition`] into a terminal status (the outcome of a job).
    Finish,
    /// Any other [`JobStore::transition`].
    Transition,
    /// [`JobStore::heartbeat`].
    Heartbeat,
    /// [`JobStore::get`].
    Get,
}

/// When and how a call fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Each call fails with probability `before` without reaching the store, else with
    /// probability `after` once the store has done it.
    Random {
        /// Chance of failing unwritten.
        before: f64,
        /// Chance of failing written.
        after: f64,
    },
    /// The first `n` calls fail without reaching the store; later ones pass.
    First(u32),
    /// Every call fails without reaching the store.
    Always,
}

/// How many failures were injected, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Calls failed before they reached the store.
    pub before: u64,
    /// Calls failed after the store did them.
    pub after: u64,
    /// Calls passed through.
    pub passed: u64,
}

#[derive(Debug)]
struct State {
    rng: fastrand::Rng,
    seen: HashMap<Call, u32>,
    injected: HashMap<Call, Injected>,
}

/// A store wrapper that injects retryable failures by rule.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn JobStore>,
    rules: HashMap<Call, Rule>,
    delay: Duration,
    state: Mutex<State>,
}

enum Verdict {
    Pass,
    Before,
    After,
}

/// The error injected: what DynamoDB answers a transaction that collided with another.
pub fn conflict() -> StoreError {
    StoreError::Backend {
        message: "injected fault: TransactionCanceledException [TransactionConflict]".into(),
        retryable: true,
    }
}

impl Faulty {
    /// `inner` with no rule yet; `seed` drives the random rules.
    pub fn new(inner: Arc<dyn JobStore>, seed: u64) -> Self {
        Self {
            inner,
            rules: HashMap::new(),
            delay: Duration::ZERO,
            state: Mutex::new(State {
                rng: fastrand::Rng::with_seed(seed),
                seen: HashMap::new(),
                injected: HashMap::new(),
            }),
        }
    }

    /// Apply `rule` to `call`.
    #[must_use]
    pub fn with(mut self, call: Call, rule: Rule) -> Self {
        self.rules.insert(call, rule);
        self
    }

    /// Wait this long before each injected failure (a slow, failing backend).
    #[must_use]
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// What was injected into `call` so far.
    pub fn injected(&self, call: Call) -> Injected {
        self.lock().injected.get(&call).copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn verdict(&self, call: Call) -> Verdict {
        let mut st = self.lock();
        let n = {
            let seen = st.seen.entry(call).or_default();
            *seen += 1;
            *seen
        };
        let v = match self.rules.get(&call) {
            None => Verdict::Pass,
            Some(Rule::Always) => Verdict::Before,
            Some(Rule::First(k)) if n <= *k => Verdict::Before,
            Some(Rule::First(_)) => Verdict::Pass,
            Some(Rule::Random { before, after }) => {
                let r = st.rng.f64();
                if r < *before {
                    Verdict::Before
                } else if st.rng.f64() < *after {
                    Verdict::After
                } else {
                    Verdict::Pass
                }
            }
        };
        let count = st.injected.entry(call).or_default();
        match v {
            Verdict::Pass => count.passed += 1,
            Verdict::Before => count.before += 1,
            Verdict::After => count.after += 1,
        }
        v
    }

    async fn around<T>(
        &self,
        call: Call,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.verdict(call) {
            Verdict::Pass => op.await,
            Verdict::Before => {
                tokio::time::sleep(self.delay).await;
                Err(conflict())
            }
            Verdict::After => {
                let _ = op.await;
                tokio::time::sleep(self.delay).await;
                Err(StoreError::Backend {
                    message: "injected fault: the request timed out after it was sent".into(),
                    retryable: true,
                })
            }
        }
    }
}

#[async_trait]
impl JobStore for Faulty {
    async fn create(&self, job: &Job, limit: Option<u32>) -> Result<Created, StoreError> {
        self.around(Call::Create, self.inner.create(job, limit))
            .await
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        self.around(Call::Get, self.inner.get(job_id)).await
    }

    async fn list_by_owner(
        &self,
        owner: &Owner,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        self.inner.list_by_owner(owner, status, limit, cursor).await
    }

    async fn list_by_status(
        &self,
        status: JobStatus,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        self.inner.list_by_status(status, limit, cursor).await
    }

    async fn transition(
        &self,
        job_id: &str,
        expect: Expect,
        change: Change,
    ) -> Result<Job, StoreError> {
        let call = if change.to.is_terminal() {
            Call::Finish
        } else {
            Call::Transition
        };
        self.around(call, self.inner.transition(job_id, expect, change))
            .await
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        instance_id: &str,
        progress: Option<&Progress>,
        at: Timestamp,
    ) -> Result<Job, StoreError> {
        self.around(
            Call::Heartbeat,
            self.inner.heartbeat(job_id, instance_id, progress, at),
        )
        .await
    }

    async fn request_cancel(&self, job_id: &str, at: Timestamp) -> Result<Job, StoreError> {
        self.inner.request_cancel(job_id, at).await
    }

    async fn reconcile_active(
        &self,
        quiet: Duration,
    ) -> Result<Option<ReconciledCount>, StoreError> {
        self.inner.reconcile_active(quiet).await
    }
}

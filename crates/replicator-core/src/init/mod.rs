//! `init`: copy one database into another under one snapshot.
//!
//! Preflight ([`preflight`]: the shared checks, the target's state, the run lock and the sweep
//! for leftovers) → snapshot and catalog ([`source`]; with sync: publication, then the slot
//! whose snapshot the copy uses) → the plan and pre-data (one transaction) → data and, per
//! table as soon as its rows are in, its indexes and constraints → foreign keys → the rest of
//! post-data ([`run`], [`post_data`]) → sequences and large objects ([`finish`]) → ANALYZE →
//! the copy recorded as complete → the subscription and the bookkeeping's removal in one
//! transaction, or just the removal ([`replicate`]). A pool
//! of `jobs` connection pairs ([`pool`]) works one queue ([`queue`]); every unit and item is one target
//! transaction that claims its record first, so a failure loses nothing that was finished, a
//! retry never applies anything twice, and nothing is left half done.
//!
//! A run that fails or is stopped drops the slot and publication it made, and when it had not
//! moved a row yet, the database it created (or the bookkeeping it added to an existing one):
//! what is left behind is either nothing or a copy `--resume` can finish.

mod finish;
mod pool;
mod post_data;
mod preflight;
mod queue;
mod refresh;
mod replicate;
mod run;
mod source;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::{Error, Result, Side};
use crate::filter::Filter;
use crate::plan::{SplitPolicy, SplitSize};
use crate::progress::{Event, Observer, Phase};
use crate::sync::{self, SyncMode, SyncNames, SyncReport};
use crate::target::{self, TargetState};

pub(crate) use finish::copy_sequences;
use preflight::{preflight, Preflight};
use replicate::{
    drop_bookkeeping, finish_complete_copy, retire_old_replication, start_replication,
};
use run::run;
use source::take_snapshot;

/// Which COPY format to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    /// Binary where every column's type supports it, text otherwise.
    Auto,
    /// Always text.
    Text,
}

/// Options of an `init` run.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Database copied from.
    pub source: ConnUrl,
    /// Database copied into (created if missing).
    pub target: ConnUrl,
    /// Connection pairs working the queue.
    pub jobs: usize,
    /// What to copy.
    pub filter: Filter,
    /// Replace a non-empty target.
    pub drop_existing: bool,
    /// Finish an interrupted run instead of refusing its target.
    pub resume: bool,
    /// The `application_name` prefix of earlier runs known to be gone (a remote job's next
    /// worker names its job's workers so): a run lock still held by a session so named is taken
    /// from it rather than refused (see [`crate::sync::lock_run`]), and its sessions on the
    /// target are ended as a killed run's are. Never for a local run: there, another person's
    /// live run may hold the lock.
    pub take_over_lost_run: Option<String>,
    /// How to split large tables.
    pub split: SplitPolicy,
    /// COPY format.
    pub format: FormatChoice,
    /// `pg_dump --no-owner`.
    pub no_owner: bool,
    /// `pg_dump --no-privileges`.
    pub no_privileges: bool,
    /// Where `pg_dump` and `psql` are (searched when `None`).
    pub pg_bindir: Option<PathBuf>,
    /// `maintenance_work_mem` for index builds on the target.
    pub maintenance_work_mem: String,
    /// Attempts per unit or item after a retryable error.
    pub retries: u32,
    /// Whether replication follows the copy (see [`crate::sync`]).
    pub sync: SyncMode,
    /// How the target server reaches the source for replication, when not as `source`.
    pub sync_source: Option<ConnUrl>,
}

impl InitOptions {
    /// Defaults: one connection pair per core, splits decided by the planner, binary COPY.
    pub fn new(source: ConnUrl, target: ConnUrl) -> Self {
        Self {
            source,
            target,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            filter: Filter::default(),
            drop_existing: false,
            resume: false,
            take_over_lost_run: None,
            split: SplitPolicy {
                size: SplitSize::Auto,
                max_parts: 64,
                tid_range_scan: true,
            },
            format: FormatChoice::Auto,
            no_owner: false,
            no_privileges: false,
            pg_bindir: None,
            maintenance_work_mem: "256MB".into(),
            retries: 3,
            sync: SyncMode::Off,
            sync_source: None,
        }
    }
}

/// What a completed run did.
#[derive(Debug, Clone, Default)]
pub struct InitReport {
    /// Tables whose rows were copied.
    pub tables: usize,
    /// Rows copied (this run).
    pub rows: u64,
    /// COPY bytes moved (this run).
    pub bytes: u64,
    /// Units of work (this run / in all).
    pub units_run: usize,
    /// Units in the plan.
    pub units_total: usize,
    /// Post-data items applied.
    pub post_data_items: usize,
    /// Sequences set.
    pub sequences: usize,
    /// Large objects copied.
    pub large_objects: usize,
    /// Time per phase.
    pub phases: Vec<(Phase, Duration)>,
    /// Things the user should know.
    pub warnings: Vec<String>,
    /// Whether this run finished an interrupted one.
    pub resumed: bool,
    /// A resumed run whose finished tables kept the interrupted run's snapshot (they could not
    /// be brought up to the new one): the copy mixes two moments of the source.
    pub mixed_moments: bool,
    /// The replication that now keeps the target in step, when one was started.
    pub sync: Option<SyncReport>,
}

impl InitReport {
    /// What a remote `init` job records: the replication it left running, if any.
    pub fn to_result(&self) -> job_model::report::InitResult {
        job_model::report::InitResult {
            version: job_model::report::REPORT_VERSION,
            replicating: self.sync.is_some(),
            replication: self
                .sync
                .as_ref()
                .map(|s| job_model::report::ReplicationResult {
                    slot: s.names.slot.clone(),
                    publication: s.names.publication.clone(),
                    subscription: s.names.subscription.clone(),
                    consistent_point: s.consistent_point.clone(),
                    published_tables: u64::try_from(s.published_tables).unwrap_or(u64::MAX),
                }),
        }
    }
}

/// Inspect the target without changing it (for the CLI's confirmation prompt).
///
/// # Errors
/// [`Error::Connect`] / [`Error::Sql`].
pub async fn inspect_target(target_url: &ConnUrl) -> Result<TargetState> {
    let maintenance = target::connect_maintenance(target_url).await?;
    target::state(&maintenance, target_url).await
}

/// What this run has made on the two servers so far: what a failure must take away again.
#[derive(Debug, Clone, Copy, Default)]
struct Made {
    /// The publication and (perhaps) the slot on the source.
    replication: bool,
    /// The target database.
    database: bool,
    /// The bookkeeping schema in the target database.
    bookkeeping: bool,
    /// The pre-data section.
    pre_data: bool,
    /// At least one unit's rows.
    rows: bool,
    /// Every part of the copy (the COMPLETE step is recorded).
    complete: bool,
}

pub(crate) struct Ctx {
    opts: InitOptions,
    observer: Observer,
    report: Mutex<InitReport>,
    made: Mutex<Made>,
    /// The target server's system identifier (recorded in the publication's comment).
    target_system: Mutex<Option<String>>,
}

impl Ctx {
    fn emit(&self, e: Event) {
        (self.observer)(&e);
    }

    /// Tell the user (through the observer, which prints it) and keep it for the report.
    fn warn(&self, message: String) {
        tracing::info!(warning = %message);
        self.emit(Event::Warning(message.clone()));
        lock(&self.report).warnings.push(message);
    }

    fn made(&self, f: impl FnOnce(&mut Made)) {
        f(&mut lock(&self.made));
    }

    /// A unit's rows are in the target (now or by an earlier attempt).
    fn rows_moved(&self) {
        self.made(|m| m.rows = true);
    }

    async fn phase<T>(
        &self,
        phase: Phase,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.emit(Event::PhaseStarted(phase));
        let start = Instant::now();
        let out = work.await?;
        let elapsed = start.elapsed();
        lock(&self.report).phases.push((phase, elapsed));
        self.emit(Event::PhaseFinished(phase, elapsed));
        Ok(out)
    }
}

/// The target server's system identifier, read in the preflight.
fn pre_target_system(ctx: &Ctx) -> Option<String> {
    lock(&ctx.target_system).clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Copy the source database into the target. See the module documentation for the steps.
///
/// # Errors
/// The first failure, as one line; finished units and items stay recorded in the target so that
/// `resume` can finish the run.
pub async fn init(opts: InitOptions, observer: Observer) -> Result<InitReport> {
    init_until(opts, observer, std::future::pending()).await
}

/// [`init`] until `stop` resolves (Ctrl-C, SIGTERM, a worker told to stop): the run then ends
/// as a failed one does. Its sessions close, so the unit or item in flight rolls back; the slot
/// and publication it made are dropped; a target it created before any row moved is dropped
/// too. It returns [`Error::Cancelled`].
///
/// # Errors
/// As [`init`], or [`Error::Cancelled`].
pub async fn init_until(
    opts: InitOptions,
    observer: Observer,
    stop: impl std::future::Future<Output = ()>,
) -> Result<InitReport> {
    if opts.jobs == 0 {
        return Err(Error::Usage("--jobs must be at least 1".into()));
    }
    let names = SyncNames::for_target(&opts.target);
    let sessions = crate::connect::Sessions::tracked();
    let ctx = Arc::new(Ctx {
        opts,
        observer,
        report: Mutex::new(InitReport::default()),
        made: Mutex::new(Made::default()),
        target_system: Mutex::new(None),
    });
    // Leaving the select drops the losing branch: every session of the run closes.
    // Boxed: the run's future is large, and callers (the worker) hold it beside others.
    let outcome = sessions
        .scope(Box::pin(async {
            tokio::select! {
                r = run_all(&ctx, &names) => r,
                () = stop => Err(Error::Cancelled),
            }
        }))
        .await;
    match outcome {
        Ok(()) => Ok(lock(&ctx.report).clone()),
        Err(e) => {
            // Sessions still waiting on a server (a lock, a long statement) are told to stop
            // before the clean-up, which may need the locks they wait for.
            let asked = sessions.cancel_all().await;
            tracing::debug!(
                sessions = asked,
                "cancelled what the run's sessions were running"
            );
            clean_up(&ctx, &names).await;
            Err(e)
        }
    }
}

async fn run_all(ctx: &Arc<Ctx>, names: &SyncNames) -> Result<()> {
    let mut pre = ctx.phase(Phase::Preflight, preflight(ctx, names)).await?;
    let _lock = pre.lock.take();
    if pre.complete {
        lock(&ctx.report).resumed = true;
        return finish_complete_copy(ctx, &pre, names).await;
    }
    retire_old_replication(ctx, &pre, names).await?;
    let snap = ctx
        .phase(
            Phase::Snapshot,
            take_snapshot(ctx, pre.sync.then_some(names), pre.recorded_tables.as_ref()),
        )
        .await?;
    let slot = snap.slot.clone();
    prepare_target(ctx, &pre).await?;
    run(ctx, &pre, snap).await?;
    match slot {
        Some((created, published)) => {
            let report = ctx
                .phase(
                    Phase::Replication,
                    start_replication(ctx, names, created.consistent_point, published),
                )
                .await?;
            lock(&ctx.report).sync = Some(report);
        }
        None => drop_bookkeeping(ctx).await?,
    }
    Ok(())
}

/// After a failure or a stop: take away what this run made and no later run could use. A
/// slot it made for a copy that did not complete is worth nothing (the next run needs its own
/// snapshot) and would make the source keep WAL for ever; a database it created before any row
/// moved holds only what a rerun makes again in seconds. Best effort: what cannot be done is
/// said in a warning with the command that does it.
async fn clean_up(ctx: &Ctx, names: &SyncNames) {
    let mut made = *lock(&ctx.made);
    let o = &ctx.opts;
    // What committed decides, not what this process saw: a psql killed with the run may have
    // committed the pre-data, and a lost reply may hide that the copy was recorded complete.
    if made.bookkeeping || made.database || o.resume {
        if let Ok(t) = connect(&o.target, Side::Target).await {
            if let Ok((_, steps)) = target::load_bookkeeping(&t).await {
                made.pre_data |= steps.iter().any(|s| s == "pre-data");
                made.complete |= steps.iter().any(|s| s == target::COMPLETE_STEP);
            }
        }
    }
    if made.replication && !made.complete {
        match sync::abandon(&o.source, &o.target, names).await {
            Ok(dropped) if !dropped.is_empty() => ctx.warn(format!(
                "dropped the {} made for this copy",
                dropped.join(" and ")
            )),
            Ok(_) => {}
            Err(e) => ctx.warn(format!(
                "the copy failed and its replication slot {} could not be dropped ({e}); drop it \
                 with `postgres-seren-replicator sync --stop` or SELECT \
                 pg_drop_replication_slot('{}') on the source, or the source keeps WAL for it",
                names.slot, names.slot
            )),
        }
    }
    if made.rows || made.complete || o.resume {
        return;
    }
    if made.database {
        let dropped = async {
            let maintenance = target::connect_maintenance(&o.target).await?;
            target::drop_database(&maintenance, &o.target).await
        }
        .await;
        match dropped {
            Ok(()) => ctx.warn(format!(
                "removed the target database {} this run had created: nothing had been copied \
                 into it yet",
                o.target.dbname
            )),
            Err(e) => ctx.warn(format!(
                "the target database {} this run created could not be removed ({e}); rerun with \
                 --drop-existing",
                o.target.dbname
            )),
        }
    } else if made.bookkeeping && !made.pre_data {
        let dropped = async {
            let t = connect(&o.target, Side::Target).await?;
            target::drop_bookkeeping(&t).await
        }
        .await;
        if let Err(e) = dropped {
            ctx.warn(format!(
                "the bookkeeping schema {} could not be removed from the target database {} \
                 ({e}); drop it, or rerun with --drop-existing",
                target::BOOKKEEPING_SCHEMA,
                o.target.dbname
            ));
        }
    }
}

/// Drop and/or create the target database. Runs only after every check has passed, so a
/// refused run changes nothing.
async fn prepare_target(ctx: &Ctx, pre: &Preflight) -> Result<()> {
    let o = &ctx.opts;
    let Some(locale) = &pre.create_with else {
        return Ok(());
    };
    if pre.state != TargetState::Missing {
        // Its subscription, if any, went in retire_old_replication.
        target::drop_database(&pre.maintenance, &o.target).await?;
    }
    let warning = target::create_database(&pre.maintenance, &o.target, locale).await?;
    ctx.made(|m| m.database = true);
    if let Some(w) = warning {
        ctx.warn(w);
    }
    Ok(())
}

//! `init`: copy one database into another under one snapshot.
//!
//! Preflight ([`preflight`]: the shared checks, the target's state, the run lock and the sweep
//! for leftovers) → snapshot and catalog (with sync: publication, then the slot whose snapshot
//! the copy uses) → pre-data (one transaction) → data and, per table as soon as its rows are
//! in, its indexes and constraints → foreign keys → the rest of post-data ([`post_data`]) →
//! sequences and large objects ([`finish`]) → ANALYZE → the copy recorded as complete → the
//! subscription and the bookkeeping's removal in one transaction (or just the removal). A pool
//! of `jobs` connection pairs ([`pool`]) works one queue; every unit and item is one target
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

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::{self, Catalog};
use crate::checks;
use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::{Error, Result, Side};
use crate::filter::{Filter, QualName};
use crate::plan::{self, SplitPolicy, SplitSize};
use crate::progress::{Event, Observer, Phase, PlanSummary};
use crate::schema::{self, DumpOptions};
use crate::snapshot::{self, Snapshot};
use crate::sync::{self, SyncMode, SyncNames, SyncReport};
use crate::target::{self, TargetState};

pub(crate) use finish::copy_sequences;
use pool::{run_pool, with_retries, Pair, Sched, Shared, Task, Tracker};
use post_data::{classify, Classified, Item};
use preflight::{preflight, tables_to_copy, Preflight};

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
    /// The replication that now keeps the target in step, when one was started.
    pub sync: Option<SyncReport>,
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
    let mut opts = opts;
    let sessions = crate::connect::Sessions::tracked();
    opts.source.sessions = sessions.clone();
    opts.target.sessions = sessions.clone();
    let ctx = Arc::new(Ctx {
        opts,
        observer,
        report: Mutex::new(InitReport::default()),
        made: Mutex::new(Made::default()),
        target_system: Mutex::new(None),
    });
    // Leaving the select drops the losing branch: every session of the run closes.
    let outcome = tokio::select! {
        r = run_all(&ctx, &names) => r,
        () = stop => Err(Error::Cancelled),
    };
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
            take_snapshot(ctx, pre.sync.then_some(names)),
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

/// A target about to be replaced may still be subscribed to the source (an earlier sync). Its
/// subscription goes first: left running, it would reattach to the slot this run creates under
/// the same name and consume changes meant for the new copy. Without sync in this run, the old
/// slot and publication go too, or the source would keep WAL for them.
async fn retire_old_replication(ctx: &Ctx, pre: &Preflight, names: &SyncNames) -> Result<()> {
    let o = &ctx.opts;
    if pre.create_with.is_none() || pre.state == TargetState::Missing {
        return Ok(());
    }
    let mut subscribed = false;
    if let Ok(old) = connect(&o.target, Side::Target).await {
        if sync::drop_subscription(&old, names).await? {
            tracing::info!(subscription = %names.subscription, "dropped the replaced target's subscription");
            subscribed = true;
        }
    }
    // The replaced copy's slot and publication were its own (its subscription used them); a
    // new slot of the same name is made below when sync follows.
    if subscribed || !pre.sync {
        let source = connect(&o.source, Side::Source).await?;
        sync::drop_source_objects(&source, names).await?;
    }
    Ok(())
}

/// The copy is complete: subscribe the target to the slot, so that replication starts exactly
/// where the copy's snapshot ended, and remove the bookkeeping in the same transaction. When
/// the target cannot subscribe, the slot, the publication and the bookkeeping (which records
/// the copy as complete) are kept, so that `sync` can start it later from the same point.
async fn start_replication(
    ctx: &Ctx,
    names: &SyncNames,
    consistent_point: String,
    published: usize,
) -> Result<SyncReport> {
    let o = &ctx.opts;
    let via = o.sync_source.as_ref().unwrap_or(&o.source);
    if via.password.is_some() {
        ctx.warn(
            "the subscription's connection string holds the source password, which the target \
             keeps in pg_subscription (readable by its superusers); prefer a replication role \
             of its own, or --sync-source-url without a password and a pgpass file on the \
             target server"
                .into(),
        );
    }
    let target = connect(&o.target, Side::Target).await?;
    if let Err(e) = sync::create_subscription(&target, names, via).await {
        return Err(Error::ReplicationNotStarted(format!(
            "the copy is complete, but replication did not start: {e}. The slot {} keeps the \
             source's changes since the copy; fix the cause and run `postgres-seren-replicator \
             sync` to start from there, or `sync --stop` to drop the slot",
            names.slot
        )));
    }
    Ok(SyncReport {
        names: names.clone(),
        consistent_point,
        published_tables: published,
    })
}

/// `--resume` of a copy that had completed: start its replication from the slot it made, or,
/// when replication does not follow, drop the slot and the bookkeeping.
async fn finish_complete_copy(ctx: &Ctx, pre: &Preflight, names: &SyncNames) -> Result<()> {
    let o = &ctx.opts;
    let source = connect(&o.source, Side::Source).await?;
    let (slot, publication) = sync::source_objects(&source, names).await?;
    let lost = slot && sync::slot_lost(&source, names).await?;
    if lost {
        ctx.warn(format!(
            "the copy is complete, but its replication slot {} was invalidated (the source \
             removed WAL it needed, see max_slot_wal_keep_size), so replication cannot start \
             without a gap: `postgres-seren-replicator sync --force` copies again and replicates",
            names.slot
        ));
    }
    if pre.sync && slot && publication && !lost {
        let (point, published) = sync::slot_origin(&source, names).await?;
        let report = ctx
            .phase(
                Phase::Replication,
                start_replication(ctx, names, point, published),
            )
            .await?;
        lock(&ctx.report).sync = Some(report);
        return Ok(());
    }
    if o.sync != SyncMode::Off && !slot && !lost {
        ctx.warn(format!(
            "the copy is complete, but its replication slot {} is gone, so replication cannot \
             start without a gap: `postgres-seren-replicator sync --force` copies again and \
             replicates",
            names.slot
        ));
    }
    let dropped = sync::drop_source_objects(&source, names).await?;
    if !dropped.is_empty() {
        ctx.warn(format!(
            "dropped the {} of the complete copy: replication does not follow it",
            dropped.join(" and ")
        ));
    }
    drop_bookkeeping(ctx).await
}

/// Remove the bookkeeping once the copy is complete (retried: dropping it twice is harmless).
async fn drop_bookkeeping(ctx: &Ctx) -> Result<()> {
    let o = &ctx.opts;
    with_retries(ctx, "remove the bookkeeping", || async {
        let t = connect(&o.target, Side::Target).await?;
        target::drop_bookkeeping(&t).await
    })
    .await
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

struct Snap {
    snapshot: Snapshot,
    catalog: Catalog,
    copy: Vec<bool>,
    excluded: Vec<QualName>,
    /// With sync: the slot whose snapshot this is, and how many tables it publishes.
    slot: Option<(crate::replication::CreatedSlot, usize)>,
}

/// What the publication carries and what it leaves out.
struct Published {
    tables: Vec<QualName>,
    left_out: HashSet<QualName>,
}

/// With sync: publish the tables the copy will fill that replication can keep exact, then
/// create the slot whose exported snapshot the copy uses. The publication comes first because
/// pgoutput decides what a change belongs to by the catalog as of that change. Tables that are
/// not permanent, or whose UPDATE and DELETE replication cannot carry, are copied and left out,
/// with a warning: publishing a table without a replica identity would make the application's
/// UPDATE and DELETE on it fail.
async fn snapshot_with_slot(
    ctx: &Ctx,
    names: &SyncNames,
) -> Result<(Snapshot, crate::replication::CreatedSlot, Published)> {
    let o = &ctx.opts;
    let plain = connect(&o.source, Side::Source).await?;
    let now = catalog::read(&plain).await?;
    let (persistent, unlogged) = sync::replicable(&plain, &tables_to_copy(&now, &o.filter)).await?;
    if !unlogged.is_empty() {
        let list: Vec<String> = unlogged.iter().map(ToString::to_string).collect();
        ctx.warn(format!(
            "copied but not replicated (logical replication carries permanent tables only): {}",
            list.join(", ")
        ));
    }
    let gaps = checks::identity_problems(&plain, Some(&persistent)).await?;
    if !gaps.is_empty() {
        let list: Vec<String> = gaps.iter().map(ToString::to_string).collect();
        ctx.warn(format!(
            "copied but not replicated: {}; publishing them would make UPDATE and DELETE on them \
             fail on the source or stop the subscription, so changes to them after the copy do \
             not reach the target: {}",
            checks::name_list(&list, 10),
            checks::IDENTITY_FIX
        ));
    }
    let gap_tables: HashSet<&QualName> = gaps.iter().map(|g| &g.table).collect();
    let tables: Vec<QualName> = persistent
        .iter()
        .filter(|t| !gap_tables.contains(t))
        .cloned()
        .collect();
    let left_out: HashSet<QualName> = unlogged
        .into_iter()
        .chain(gaps.into_iter().map(|g| g.table))
        .collect();
    warn_money_locale(ctx, &plain, &tables).await?;
    // Anything of this name still there belongs to a replication this run may not end.
    sync::refuse_existing(&plain, names).await?;
    ctx.made(|m| m.replication = true);
    let comment = sync::publication_comment(&o.target, pre_target_system(ctx).as_deref());
    sync::create_publication(&plain, names, &tables, &comment).await?;
    let (snapshot, created) = sync::create_slot(&o.source, &plain, names).await?;
    Ok((snapshot, created, Published { tables, left_out }))
}

/// Replication carries values as text rendered by the source's WAL sender, which does not pin
/// `lc_monetary` as this tool's sessions do: a `money` column is read back right only when the
/// target reads it in the same locale. Warn when the two defaults differ.
async fn warn_money_locale(
    ctx: &Ctx,
    source: &tokio_postgres::Client,
    tables: &[QualName],
) -> Result<()> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let with_money: Vec<String> = source
        .query(
            "SELECT DISTINCT format('%I.%I', n.nspname, c.relname) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.atttypid = 'money'::regtype AND a.attnum > 0 AND NOT a.attisdropped \
               AND (n.nspname::text, c.relname::text) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
             ORDER BY 1",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "look for money columns", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if with_money.is_empty() {
        return Ok(());
    }
    let default = "SELECT reset_val FROM pg_settings WHERE name = 'lc_monetary'";
    let theirs: String = source
        .query_one(default, &[])
        .await
        .map_err(|e| Error::sql(Side::Source, "read lc_monetary", e))?
        .get(0);
    let maintenance = target::connect_maintenance(&ctx.opts.target).await?;
    let ours: String = maintenance
        .query_one(default, &[])
        .await
        .map_err(|e| Error::sql(Side::Target, "read lc_monetary", e))?
        .get(0);
    if theirs != ours {
        ctx.warn(format!(
            "{} have money columns, and the source renders money in lc_monetary {theirs} while \
             the target reads it in {ours}: replicated changes to them would arrive wrong or stop \
             the subscription; set lc_monetary = '{theirs}' on the target database (ALTER DATABASE \
             … SET lc_monetary) before writes start, or use numeric",
            checks::name_list(&with_money, 5)
        ));
    }
    Ok(())
}

async fn take_snapshot(ctx: &Ctx, sync_names: Option<&SyncNames>) -> Result<Snap> {
    let (snapshot, slot) = match sync_names {
        Some(names) => {
            let (snapshot, created, published) = snapshot_with_slot(ctx, names).await?;
            (snapshot, Some((created, published)))
        }
        None => (Snapshot::export(&ctx.opts.source).await?, None),
    };
    let client = connect(&ctx.opts.source, Side::Source).await?;
    snapshot::import(&client, snapshot.name()).await?;
    let catalog = catalog::read(&client).await?;
    let filter = &ctx.opts.filter;
    for name in filter.row_filters.keys() {
        if !catalog.tables.iter().any(|t| &t.name == name) {
            return Err(Error::Usage(format!(
                "--table-filter names {name}, which is not a table in the source"
            )));
        }
    }
    let excluded: Vec<QualName> = catalog
        .relations
        .iter()
        .filter(|r| !filter.selects(r))
        .cloned()
        .collect();
    if !filter.include.is_empty()
        && excluded.len() == catalog.relations.len()
        && !catalog.relations.is_empty()
    {
        return Err(Error::Usage(
            "--include-tables matches no table in the source".into(),
        ));
    }
    let copy = catalog
        .tables
        .iter()
        .map(|t| filter.selects(&t.name) && !filter.is_schema_only(&t.name))
        .collect();
    let slot = match slot {
        Some((created, published)) => {
            // A table created between the publication and the slot would be copied and then
            // never replicated: refuse rather than drift.
            let published_set: HashSet<&QualName> = published.tables.iter().collect();
            let (persistent, _) =
                sync::replicable(&client, &tables_to_copy(&catalog, filter)).await?;
            let missing: Vec<String> = persistent
                .iter()
                .filter(|t| !published_set.contains(t) && !published.left_out.contains(t))
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                return Err(Error::Preflight(format!(
                    "table(s) {} appeared on the source while replication was being set up; run \
                     again",
                    missing.join(", ")
                )));
            }
            Some((created, published.tables.len()))
        }
        None => None,
    };
    Ok(Snap {
        snapshot,
        catalog,
        copy,
        excluded,
        slot,
    })
}

/// The plan of this run: a fresh one recorded in new bookkeeping, or the interrupted run's,
/// with its split tables that did not finish planned again whole. Returns the units and the
/// keys of the steps already done.
async fn plan_units(
    ctx: &Ctx,
    pre: &Preflight,
    catalog: &Catalog,
    copy: &[bool],
) -> Result<(Vec<plan::Unit>, HashSet<String>)> {
    let o = &ctx.opts;
    let bookkeeping = connect(&o.target, Side::Target).await?;
    if pre.resumed {
        let (records, steps) = target::load_bookkeeping(&bookkeeping).await?;
        // Rows updated since the interrupted run's snapshot may have moved between blocks: a
        // split table must not mix ranges of two snapshots, so it is copied again whole.
        let (records, redo) = plan::restart_unfinished_splits(records);
        for r in &redo {
            target::replace_units(&bookkeeping, &r.schema, &r.table, r).await?;
            ctx.warn(format!(
                "copying {}.{} again in one piece: not all of its block ranges had finished \
                 before the interruption, and rows may have moved between blocks since",
                r.schema, r.table
            ));
        }
        let units = plan::from_records(&records, &catalog.tables, &o.filter)?;
        ctx.warn(
            "resuming an interrupted run: its finished units are kept and the rest are copied \
             from a new snapshot, so rows copied before and after the interruption reflect \
             different moments of the source; for a consistent copy start over with \
             --drop-existing"
                .into(),
        );
        return Ok((units, steps.into_iter().collect()));
    }
    let policy = SplitPolicy {
        tid_range_scan: o.split.tid_range_scan && pre.source_major >= 14,
        ..o.split
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let streams = plan::stream_capacity(
        o.source.is_on_this_machine(),
        o.target.is_on_this_machine(),
        cores,
        o.jobs as u64,
    );
    let units = plan::plan(
        &catalog.tables,
        copy,
        &o.filter,
        policy,
        o.jobs as u64,
        streams,
    );
    tracing::info!(streams, units = units.len(), "planned the data phase");
    target::create_bookkeeping(
        &bookkeeping,
        &plan::records(&units, &catalog.tables),
        &pre.source_identity,
        &o.filter.describe(),
    )
    .await?;
    ctx.made(|m| m.bookkeeping = true);
    Ok((units, HashSet::new()))
}

async fn run(ctx: &Arc<Ctx>, pre: &Preflight, snap: Snap) -> Result<()> {
    let o = &ctx.opts;
    let Snap {
        snapshot,
        catalog,
        copy,
        excluded,
        slot: _,
    } = snap;
    let (units, done_steps) = plan_units(ctx, pre, &catalog, &copy).await?;
    {
        let mut r = lock(&ctx.report);
        r.resumed = pre.resumed;
        r.tables = copy.iter().filter(|c| **c).count();
        r.units_total = units.len();
    }

    let dump_opts = DumpOptions {
        excluded,
        no_owner: o.no_owner,
        no_privileges: o.no_privileges,
        target_major: pre.target_major,
    };
    if !done_steps.contains("pre-data") {
        ctx.phase(
            Phase::PreData,
            schema::restore_pre_data(
                &pre.tools,
                &o.source,
                &o.target,
                snapshot.name(),
                &dump_opts,
                &target::record_step_sql("pre-data"),
            ),
        )
        .await?;
        ctx.made(|m| m.pre_data = true);
    }
    let post = schema::dump_post_data(&pre.tools, &o.source, snapshot.name(), &dump_opts).await?;
    let classified = classify(&post, &catalog, &done_steps);
    let post_items = classified.len();
    let Classified {
        by_table,
        attach,
        foreign_keys,
        rest,
    } = classified;

    let summary = PlanSummary {
        tables: lock(&ctx.report).tables,
        units: units.len(),
        units_done: units.iter().filter(|u| u.done).count(),
        bytes_estimate: units.iter().filter(|u| !u.done).map(|u| u.est_bytes).sum(),
        rows_estimate: catalog
            .tables
            .iter()
            .zip(&copy)
            .filter(|(_, c)| **c)
            .filter_map(|(t, _)| t.est_rows)
            .sum(),
        post_data_items: post_items,
    };
    ctx.emit(Event::Planned(summary.clone()));

    // The pool.
    let mut pairs = Vec::with_capacity(o.jobs);
    for id in 0..o.jobs {
        pairs.push(Pair::open(ctx, id, snapshot.name(), &post).await?);
    }
    let shared = Shared {
        snapshot: Arc::new(snapshot),
        catalog: Arc::new(catalog),
        tracker: Arc::new(Tracker::new(&units)),
        units: Arc::new(units),
    };
    let (catalog, units, tracker) = (&shared.catalog, &shared.units, &shared.tracker);

    // Data, and each table's indexes and constraints as soon as its rows are in.
    let mut sched = Sched::default();
    let mut remaining: HashMap<QualName, usize> = HashMap::new();
    for (i, u) in units.iter().enumerate() {
        if !u.done {
            sched.tasks.push_back(Task::Unit(i));
            *remaining
                .entry(catalog.tables[u.table].name.clone())
                .or_default() += 1;
        } else {
            ctx.rows_moved();
        }
    }
    for (table, items) in by_table {
        if remaining.contains_key(&table) {
            sched.waiting.insert(table, items);
        } else {
            sched.tasks.extend(items.into_iter().map(Task::Item));
        }
    }
    sched.remaining = remaining;
    let ticker = tracker.clone().start_ticker(ctx.clone());
    let data = ctx
        .phase(Phase::Data, run_pool(ctx, pairs, sched, &shared))
        .await;
    ticker.abort();
    tracker.emit_progress(ctx);
    let pairs = data?;

    // Constraints built as indexes become constraints; then foreign keys (in parallel: every
    // index and key they need exists now); then the rest in order.
    let post_phase = async {
        let mut pairs = pairs;
        for items in [attach, foreign_keys] {
            let mut sched = Sched::default();
            sched.tasks.extend(items.into_iter().map(Task::Item));
            pairs = run_pool(ctx, pairs, sched, &shared).await?;
        }
        let mut sched = Sched::default();
        sched.tasks.extend(rest.into_iter().map(Task::Item));
        // In dump order: one pair works the queue.
        let mut rest_pairs = pairs;
        let others = rest_pairs.split_off(1.min(rest_pairs.len()));
        let first = run_pool(ctx, rest_pairs, sched, &shared).await?;
        Ok::<_, Error>(first.into_iter().chain(others).collect::<Vec<_>>())
    };
    let pairs = ctx.phase(Phase::PostData, post_phase).await?;
    lock(&ctx.report).post_data_items = tracker.items_done.load(Ordering::Relaxed);

    ctx.phase(
        Phase::Finish,
        finish::finish(ctx, &shared.snapshot, catalog, &done_steps),
    )
    .await?;

    // ANALYZE every copied table, in parallel.
    let mut sched = Sched::default();
    for (t, c) in catalog.tables.iter().zip(&copy) {
        if *c {
            sched.tasks.push_back(Task::Item(Item {
                key: None,
                label: format!("analyze {}", t.name),
                sql: format!("ANALYZE {}", t.name.quoted()),
                cost: 0,
                is_index: false,
            }));
        }
    }
    ctx.phase(Phase::Analyze, run_pool(ctx, pairs, sched, &shared))
        .await?;

    with_retries(ctx, "record the copy as complete", || async {
        let t = connect(&o.target, Side::Target).await?;
        t.batch_execute(&target::record_step_sql(target::COMPLETE_STEP))
            .await
            .map_err(|e| Error::sql(Side::Target, "record the copy as complete", e))
    })
    .await?;
    ctx.made(|m| m.complete = true);
    let mut r = lock(&ctx.report);
    r.rows = tracker.rows.load(Ordering::Relaxed);
    r.bytes = tracker.bytes.load(Ordering::Relaxed);
    r.units_run = tracker.units_done.load(Ordering::Relaxed);
    Ok(())
}

//! `init`: copy one database into another under one snapshot.
//!
//! Preflight → snapshot and catalog → pre-data (one transaction) → data and, per table as soon
//! as its rows are in, its indexes and constraints → foreign keys → the rest of post-data →
//! sequences and large objects → ANALYZE → bookkeeping removed. A pool of `jobs` connection
//! pairs works one queue; every unit and item is one target transaction recorded in the
//! target's bookkeeping, so a failure loses nothing that was finished and leaves nothing half
//! done.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::Client;

use crate::catalog::{self, Catalog};
use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::copy::{copy_in_sql, copy_out_sql, pump, Format};
use crate::error::{Error, Result, Side};
use crate::filter::{Filter, QualName};
use crate::plan::{self, SplitPolicy, Unit};
use crate::progress::{DataProgress, Event, Observer, Phase, PlanSummary};
use crate::schema::{self, DumpOptions, ParsedDump};
use crate::snapshot::{self, Snapshot};
use crate::sync::{self, SyncMode, SyncNames, SyncReport};
use crate::target::{self, TargetState};

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
    /// Defaults: one connection pair per core, split tables over 1 GiB, binary COPY.
    pub fn new(source: ConnUrl, target: ConnUrl) -> Self {
        Self {
            source,
            target,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            filter: Filter::default(),
            drop_existing: false,
            resume: false,
            split: SplitPolicy {
                larger_than: 1 << 30,
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

struct Ctx {
    opts: InitOptions,
    observer: Observer,
    report: Mutex<InitReport>,
}

impl Ctx {
    fn emit(&self, e: Event) {
        (self.observer)(&e);
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.emit(Event::Warning(message.clone()));
        lock(&self.report).warnings.push(message);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Copy the source database into the target. See the module documentation for the steps.
///
/// # Errors
/// The first failure, as one line; finished units and items stay recorded in the target so that
/// `resume` can finish the run.
pub async fn init(opts: InitOptions, observer: Observer) -> Result<InitReport> {
    if opts.jobs == 0 {
        return Err(Error::Usage("--jobs must be at least 1".into()));
    }
    let ctx = Arc::new(Ctx {
        opts,
        observer,
        report: Mutex::new(InitReport::default()),
    });
    let pre = ctx.phase(Phase::Preflight, preflight(&ctx)).await?;
    retire_old_replication(&ctx, &pre).await?;
    let sync_names = pre.sync.then(|| SyncNames::for_target(&ctx.opts.target));
    let snap = match ctx
        .phase(Phase::Snapshot, take_snapshot(&ctx, sync_names.as_ref()))
        .await
    {
        Ok(snap) => snap,
        Err(e) => {
            abandon_sync(&ctx, sync_names.as_ref()).await;
            return Err(e);
        }
    };
    let slot = snap.slot.clone();
    let copied = async {
        prepare_target(&ctx, &pre).await?;
        run(&ctx, pre, snap).await
    }
    .await;
    if let Err(e) = copied {
        abandon_sync(&ctx, sync_names.as_ref()).await;
        return Err(e);
    }
    if let (Some(names), Some((created, published))) = (sync_names, slot) {
        let report = ctx
            .phase(
                Phase::Replication,
                start_replication(&ctx, names, created, published),
            )
            .await?;
        lock(&ctx.report).sync = Some(report);
    }
    let report = lock(&ctx.report).clone();
    Ok(report)
}

/// A target about to be replaced may still be subscribed to the source (an earlier sync). Its
/// subscription goes first: left running, it would reattach to the slot this run creates under
/// the same name and consume changes meant for the new copy. Without sync in this run, the old
/// slot and publication go too, or the source would keep WAL for them.
async fn retire_old_replication(ctx: &Ctx, pre: &Preflight) -> Result<()> {
    let o = &ctx.opts;
    if pre.create_with.is_none() || pre.state == TargetState::Missing {
        return Ok(());
    }
    let names = SyncNames::for_target(&o.target);
    if let Ok(old) = connect(&o.target, Side::Target).await {
        if sync::drop_subscription(&old, &names).await? {
            tracing::info!(subscription = %names.subscription, "dropped the replaced target's subscription");
        }
    }
    if !pre.sync {
        let source = connect(&o.source, Side::Source).await?;
        sync::drop_source_objects(&source, &names).await?;
    }
    Ok(())
}

/// After a failed copy, drop the slot and publication made for it: a slot left behind makes
/// the source keep WAL for ever. Best effort; a failure here is logged, not returned.
async fn abandon_sync(ctx: &Ctx, names: Option<&SyncNames>) {
    let Some(names) = names else { return };
    match sync::abandon(&ctx.opts.source, &ctx.opts.target, names).await {
        Ok(dropped) if !dropped.is_empty() => {
            tracing::info!(
                ?dropped,
                "dropped the replication set up for the failed copy"
            );
        }
        Ok(_) => {}
        Err(e) => ctx.warn(format!(
            "the copy failed and its replication slot {} could not be dropped ({e}); drop it \
             with `postgres-seren-replicator sync --stop` or SELECT pg_drop_replication_slot('{}') \
             on the source, or the source keeps WAL for it",
            names.slot, names.slot
        )),
    }
}

/// The copy is complete: subscribe the target to the slot, so that replication starts exactly
/// where the copy's snapshot ended. When the target cannot subscribe, the slot and publication
/// are kept so that `sync` can start it later from the same point.
async fn start_replication(
    ctx: &Ctx,
    names: SyncNames,
    created: crate::replication::CreatedSlot,
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
    if let Err(e) = sync::create_subscription(&target, &names, via).await {
        return Err(Error::Preflight(format!(
            "the copy is complete, but replication did not start: {e}. The slot {} keeps the \
             source's changes since the copy; fix the cause and run `postgres-seren-replicator \
             sync` to start from there, or `sync --stop` to drop the slot",
            names.slot
        )));
    }
    Ok(SyncReport {
        names,
        consistent_point: created.consistent_point,
        published_tables: published,
    })
}

struct Preflight {
    tools: schema::Tools,
    source_major: u32,
    resumed: bool,
    state: TargetState,
    /// The session on the target's maintenance database, for DROP/CREATE DATABASE.
    maintenance: Client,
    /// The locale to create the target database with, when it is to be (re)created.
    create_with: Option<target::DatabaseLocale>,
    /// Whether replication follows the copy.
    sync: bool,
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
    if let Some(w) = target::create_database(&pre.maintenance, &o.target, locale).await? {
        ctx.warn(w);
    }
    Ok(())
}

async fn preflight(ctx: &Ctx) -> Result<Preflight> {
    let o = &ctx.opts;
    let (source, maintenance) = tokio::try_join!(
        connect(&o.source, Side::Source),
        target::connect_maintenance(&o.target)
    )?;
    let source_major = catalog::major_version(&source, Side::Source).await?;
    let target_major = catalog::major_version(&maintenance, Side::Target).await?;
    if target_major < source_major {
        return Err(Error::Preflight(format!(
            "the target server runs PostgreSQL {target_major}, older than the source's \
             {source_major}: copy into a server of version {source_major} or newer"
        )));
    }
    if same_database(&source, &maintenance, &o.source, &o.target).await? {
        return Err(Error::Preflight(format!(
            "source and target are the same database ({}): name a different target",
            o.target.redacted()
        )));
    }
    let tools = schema::find_tools(o.pg_bindir.as_deref(), source_major).await?;

    let state = target::state(&maintenance, &o.target).await?;
    let mut resumed = false;
    match (&state, o.drop_existing, o.resume) {
        (_, true, true) => {
            return Err(Error::Usage(
                "--resume and --drop-existing contradict each other: pick one".into(),
            ))
        }
        (TargetState::Interrupted, false, true) => resumed = true,
        (_, false, true) => {
            return Err(Error::Usage(format!(
                "--resume: the target database {} holds no interrupted run to finish",
                o.target.dbname
            )))
        }
        (TargetState::NonEmpty(n), false, false) => {
            return Err(Error::TargetNotEmpty(format!(
                "the target database {} is not empty ({n} objects): pass --drop-existing to \
                 replace it (everything in it is lost), or name an empty or new database",
                o.target.dbname
            )))
        }
        (TargetState::Interrupted, false, false) => {
            return Err(Error::TargetNotEmpty(format!(
                "the target database {} holds an interrupted copy: pass --resume to finish it \
                 or --drop-existing to start over",
                o.target.dbname
            )))
        }
        _ => {}
    }
    // Extensions the source uses must be installable on the target before anything changes.
    let (_, missing) = target::missing_extensions(&source, &maintenance).await?;
    if !missing.is_empty() {
        return Err(Error::Preflight(format!(
            "extension(s) {} used by the source are not available on the target server: \
             install them there first (their packages for PostgreSQL {target_major})",
            missing.join(", ")
        )));
    }

    let create_with = if o.drop_existing || state == TargetState::Missing {
        Some(target::source_locale(&source).await?)
    } else {
        None
    };
    let sync = match o.sync {
        SyncMode::Off => false,
        mode => {
            let mut problems = sync::source_problems(&source).await?;
            problems.extend(sync::target_problems(&maintenance).await?);
            if resumed {
                problems.push(
                    "--resume finishes a copy made from an older snapshot, so replication could \
                     not start where it ends"
                        .into(),
                );
            }
            if !o.filter.row_filters.is_empty() {
                problems.push(
                    "--table-filter copies part of a table while replication would carry all of \
                     its changes"
                        .into(),
                );
            }
            match (problems.is_empty(), mode) {
                (true, _) => true,
                (false, SyncMode::Required) => {
                    return Err(Error::Preflight(format!(
                        "--sync: replication cannot follow this copy: {}",
                        problems.join("; ")
                    )))
                }
                (false, _) => {
                    ctx.warn(format!(
                        "copying only, without replication afterwards: {} (--no-sync skips this check)",
                        problems.join("; ")
                    ));
                    false
                }
            }
        }
    };
    Ok(Preflight {
        tools,
        source_major,
        resumed,
        state,
        maintenance,
        create_with,
        sync,
    })
}

/// Whether two sessions are on the same database of the same server: by the cluster's system
/// identifier where we may read it, else by its start time and port.
async fn same_database(
    source: &Client,
    maintenance: &Client,
    s: &ConnUrl,
    t: &ConnUrl,
) -> Result<bool> {
    if s.dbname != t.dbname {
        return Ok(false);
    }
    let (a, b) = tokio::join!(server_fingerprint(source), server_fingerprint(maintenance));
    Ok(a.is_some() && a == b)
}

/// What tells one running server from another: its system identifier and its start time.
/// The identifier alone is shared by every server made from the same base backup (a promoted
/// replica, a restored copy), which are different servers.
async fn server_fingerprint(c: &Client) -> Option<String> {
    match c
        .query_one(
            "SELECT system_identifier::text || '/' || pg_postmaster_start_time()::text \
             FROM pg_control_system()",
            &[],
        )
        .await
    {
        Ok(row) => Some(row.get::<_, String>(0)),
        Err(_) => c
            .query_one(
                "SELECT pg_postmaster_start_time()::text || '/' || current_setting('port')",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get::<_, String>(0)),
    }
}

struct Snap {
    snapshot: Snapshot,
    catalog: Catalog,
    copy: Vec<bool>,
    excluded: Vec<QualName>,
    /// With sync: the slot whose snapshot this is, and how many tables it publishes.
    slot: Option<(crate::replication::CreatedSlot, usize)>,
}

/// The tables whose rows a run copies.
fn tables_to_copy(catalog: &Catalog, filter: &Filter) -> Vec<QualName> {
    catalog
        .tables
        .iter()
        .filter(|t| filter.selects(&t.name) && !filter.is_schema_only(&t.name))
        .map(|t| t.name.clone())
        .collect()
}

/// With sync: publish the tables the copy will fill, then create the slot whose exported
/// snapshot the copy uses. The publication comes first because pgoutput decides what a change
/// belongs to by the catalog as of that change.
async fn snapshot_with_slot(
    ctx: &Ctx,
    names: &SyncNames,
) -> Result<(Snapshot, crate::replication::CreatedSlot, Vec<QualName>)> {
    let o = &ctx.opts;
    let plain = connect(&o.source, Side::Source).await?;
    let now = catalog::read(&plain).await?;
    let (published, skipped) = sync::replicable(&plain, &tables_to_copy(&now, &o.filter)).await?;
    if !skipped.is_empty() {
        let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        ctx.warn(format!(
            "copied but not replicated (logical replication carries permanent tables only): {}",
            list.join(", ")
        ));
    }
    sync::create_publication(&plain, names, &published).await?;
    let (snapshot, created) = sync::create_slot(&o.source, &plain, names).await?;
    Ok((snapshot, created, published))
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
            let published_set: HashSet<&QualName> = published.iter().collect();
            let (persistent, _) =
                sync::replicable(&client, &tables_to_copy(&catalog, filter)).await?;
            let missing: Vec<String> = persistent
                .iter()
                .filter(|t| !published_set.contains(t))
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                return Err(Error::Preflight(format!(
                    "table(s) {} appeared on the source while replication was being set up; run \
                     again",
                    missing.join(", ")
                )));
            }
            Some((created, published.len()))
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

/// A post-data item or any other statement the pool runs on the target.
#[derive(Debug, Clone)]
struct Item {
    /// Bookkeeping key; `None` for work that is not recorded (ANALYZE).
    key: Option<String>,
    label: String,
    sql: String,
    /// Estimated build cost: a table's costliest indexes start first.
    cost: u64,
    /// A plain index (SHARE lock: builds alongside others on its table).
    is_index: bool,
}

async fn run(ctx: &Arc<Ctx>, pre: Preflight, snap: Snap) -> Result<()> {
    let o = &ctx.opts;
    let Snap {
        snapshot,
        catalog,
        copy,
        excluded,
        slot: _,
    } = snap;
    let snapshot = Arc::new(snapshot);
    let catalog = Arc::new(catalog);
    let bookkeeping = connect(&o.target, Side::Target).await?;

    // The plan: fresh, or the interrupted run's.
    let (units, done_steps) = if pre.resumed {
        let (records, steps) = target::load_bookkeeping(&bookkeeping).await?;
        let units = plan::from_records(&records, &catalog.tables, &o.filter)?;
        ctx.warn(
            "resuming an interrupted run: its finished units are kept and the rest are copied \
             from a new snapshot, so rows copied before and after the interruption reflect \
             different moments of the source; for a consistent copy start over with \
             --drop-existing"
                .into(),
        );
        (units, steps.into_iter().collect::<HashSet<String>>())
    } else {
        let policy = SplitPolicy {
            tid_range_scan: o.split.tid_range_scan && pre.source_major >= 14,
            ..o.split
        };
        let units = plan::plan(&catalog.tables, &copy, &o.filter, policy, o.jobs as u64);
        target::create_bookkeeping(&bookkeeping, &plan::records(&units, &catalog.tables)).await?;
        (units, HashSet::new())
    };
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
    let mut workers = Vec::with_capacity(o.jobs);
    for id in 0..o.jobs {
        workers.push(Worker::open(ctx, id, snapshot.name(), &post).await?);
    }
    let tracker = Arc::new(Tracker::new(&units));
    let units = Arc::new(units);

    // Data, and each table's indexes and constraints as soon as its rows are in.
    let mut sched = Sched::default();
    let mut remaining: HashMap<QualName, usize> = HashMap::new();
    for (i, u) in units.iter().enumerate() {
        if !u.done {
            sched.tasks.push_back(Task::Unit(i));
            *remaining
                .entry(catalog.tables[u.table].name.clone())
                .or_default() += 1;
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
    // Every pass of the pool shares the snapshot, catalog, plan and counters.
    let pool = |workers: Vec<Worker>, sched: Sched| {
        run_pool(
            ctx,
            workers,
            sched,
            &snapshot,
            catalog.clone(),
            units.clone(),
            tracker.clone(),
        )
    };
    let ticker = tracker.clone().start_ticker(ctx.clone());
    let data = ctx.phase(Phase::Data, pool(workers, sched)).await;
    ticker.abort();
    tracker.emit_progress(ctx);
    let workers = data?;

    // Constraints built as indexes become constraints; then foreign keys (in parallel: every
    // index and key they need exists now); then the rest in order.
    let post_phase = async {
        let mut workers = workers;
        for items in [attach, foreign_keys] {
            let mut sched = Sched::default();
            sched.tasks.extend(items.into_iter().map(Task::Item));
            workers = pool(workers, sched).await?;
        }
        let first = workers
            .first_mut()
            .ok_or_else(|| Error::Usage("no workers".into()))?;
        for item in rest {
            first.run_item(ctx, &item).await?;
            tracker.items_done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(workers)
    };
    let workers = ctx.phase(Phase::PostData, post_phase).await?;
    lock(&ctx.report).post_data_items = tracker.items_done.load(Ordering::Relaxed);

    ctx.phase(
        Phase::Finish,
        finish(ctx, &snapshot, &catalog, &bookkeeping, &done_steps),
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
    ctx.phase(Phase::Analyze, pool(workers, sched)).await?;

    target::drop_bookkeeping(&bookkeeping).await?;
    {
        let mut r = lock(&ctx.report);
        r.rows = tracker.rows.load(Ordering::Relaxed);
        r.bytes = tracker.bytes.load(Ordering::Relaxed);
        r.units_run = tracker.units_done.load(Ordering::Relaxed);
    }
    drop(snapshot);
    Ok(())
}

/// Split post-data into: items bound to one table (indexes, constraints), foreign keys, and
/// everything else in dump order. Items an interrupted run finished are dropped.
/// Post-data items sorted for the run.
#[derive(Debug, Default)]
struct Classified {
    /// Each table's indexes and constraints, built as soon as its rows are in.
    by_table: HashMap<QualName, Vec<Item>>,
    /// `ADD CONSTRAINT … USING INDEX` for the constraints built as indexes beside the others;
    /// run before the foreign keys.
    attach: Vec<Item>,
    /// Foreign keys, in parallel once every table's indexes exist.
    foreign_keys: Vec<Item>,
    /// Everything else, in the dump's order.
    rest: Vec<Item>,
}

impl Classified {
    fn len(&self) -> usize {
        self.by_table.values().map(Vec::len).sum::<usize>()
            + self.attach.len()
            + self.foreign_keys.len()
            + self.rest.len()
    }
}

fn classify(post: &ParsedDump, catalog: &Catalog, done: &HashSet<String>) -> Classified {
    let mut out = Classified::default();
    // Tables with plain indexes to build: a primary key or unique constraint of theirs is built
    // as an index beside them (a SHARE lock) instead of before them (ADD CONSTRAINT's ACCESS
    // EXCLUSIVE lock would wait for every index build on the table), and attached afterwards.
    let indexed: HashSet<&QualName> = post
        .entries
        .iter()
        .filter(|e| e.kind == "INDEX")
        .filter_map(|e| {
            catalog
                .indexes
                .get(&(e.schema.clone(), e.tag.clone()))
                .map(|i| &i.table)
        })
        .collect();
    for (i, e) in post.entries.iter().enumerate() {
        let key = format!("post:{i}:{}:{}:{}", e.kind, e.schema, e.tag);
        if done.contains(&key) {
            continue;
        }
        let lookup = (e.schema.clone(), e.tag.clone());
        // A constraint's index usually bears the constraint's name (the tag's last word).
        let index_name = if e.kind == "INDEX" {
            e.tag.as_str()
        } else {
            e.tag.rsplit(' ').next().unwrap_or("")
        };
        let cost = catalog
            .indexes
            .get(&(e.schema.clone(), index_name.to_owned()))
            .map_or(0, |i| i.build_cost);
        let label = format!("{} {}.{}", e.kind.to_lowercase(), e.schema, e.tag);
        let item = Item {
            key: Some(key.clone()),
            label: label.clone(),
            sql: e.sql.clone(),
            cost,
            is_index: e.kind == "INDEX",
        };
        let table = match e.kind.as_str() {
            "INDEX" => catalog.indexes.get(&lookup).map(|i| &i.table),
            "CONSTRAINT" | "CHECK CONSTRAINT" => catalog.constraint_tables.get(&lookup),
            _ => None,
        };
        let separable = (e.kind == "CONSTRAINT")
            .then(|| catalog.separable_constraints.get(&lookup))
            .flatten()
            .filter(|_| table.is_some_and(|t| indexed.contains(t)));
        match (e.kind.as_str(), table, separable) {
            (_, Some(t), Some(sep)) => {
                let index_key = format!("{key}:index");
                if !done.contains(&index_key) {
                    out.by_table.entry(t.clone()).or_default().push(Item {
                        key: Some(index_key),
                        label: format!("{label} (its index)"),
                        sql: sep.index_sql.clone(),
                        cost,
                        is_index: true,
                    });
                }
                out.attach.push(Item {
                    key: Some(key),
                    label,
                    sql: sep.attach_sql.clone(),
                    cost: 0,
                    is_index: false,
                });
            }
            (_, Some(t), None) => out.by_table.entry(t.clone()).or_default().push(item),
            ("FK CONSTRAINT", None, _) => out.foreign_keys.push(item),
            _ => out.rest.push(item),
        }
    }
    // Constraints first: ADD PRIMARY KEY/UNIQUE takes an ACCESS EXCLUSIVE lock that would
    // wait for any index build on the table. Then indexes, costliest first.
    for items in out.by_table.values_mut() {
        items.sort_by_key(|i| (i.is_index, std::cmp::Reverse(i.cost)));
    }
    out
}

#[derive(Debug)]
enum Task {
    Unit(usize),
    Item(Item),
}

/// The shared queue. Items become ready when the last unit of their table finishes; they go to
/// the front so a table's indexes build while other tables are still loading.
#[derive(Debug, Default)]
struct Sched {
    tasks: VecDeque<Task>,
    waiting: HashMap<QualName, Vec<Item>>,
    remaining: HashMap<QualName, usize>,
    copied: HashMap<QualName, (u64, u64)>,
    in_flight: usize,
    error: Option<Error>,
}

/// Live counters of the data phase.
struct Tracker {
    started: Instant,
    bytes: AtomicU64,
    rows: AtomicU64,
    estimate_done: AtomicU64,
    estimate_total: u64,
    units_done: AtomicUsize,
    units_total: usize,
    items_done: AtomicUsize,
    active: Mutex<HashMap<usize, (String, u64, u64)>>,
}

impl Tracker {
    fn new(units: &[Unit]) -> Self {
        Self {
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            estimate_done: AtomicU64::new(0),
            estimate_total: units.iter().filter(|u| !u.done).map(|u| u.est_bytes).sum(),
            units_done: AtomicUsize::new(0),
            units_total: units.iter().filter(|u| !u.done).count(),
            items_done: AtomicUsize::new(0),
            active: Mutex::new(HashMap::new()),
        }
    }

    fn snapshot(&self) -> DataProgress {
        let active = lock(&self.active);
        let running: u64 = active
            .values()
            .map(|(_, moved, est)| (*moved).min(*est))
            .sum();
        let mut labels: Vec<String> = active.values().map(|(l, _, _)| l.clone()).collect();
        labels.sort();
        drop(active);
        let done = (self.estimate_done.load(Ordering::Relaxed) + running).min(self.estimate_total);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.5 {
            (done as f64 / secs) as u64
        } else {
            0
        };
        DataProgress {
            bytes_copied: self.bytes.load(Ordering::Relaxed),
            rows_copied: self.rows.load(Ordering::Relaxed),
            estimate_done: done,
            estimate_total: self.estimate_total,
            units_done: self.units_done.load(Ordering::Relaxed),
            units_total: self.units_total,
            post_items_done: self.items_done.load(Ordering::Relaxed),
            active: labels,
            bytes_per_sec: rate,
            eta_secs: (rate > 0).then(|| (self.estimate_total - done) / rate),
        }
    }

    fn emit_progress(&self, ctx: &Ctx) {
        ctx.emit(Event::Progress(self.snapshot()));
    }

    fn start_ticker(self: Arc<Self>, ctx: Arc<Ctx>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                self.emit_progress(&ctx);
            }
        })
    }
}

/// A new source and target session, opened together.
async fn connect_pair(o: &InitOptions) -> Result<(Client, Client)> {
    tokio::try_join!(
        connect(&o.source, Side::Source),
        connect(&o.target, Side::Target)
    )
}

/// One connection pair of the pool.
struct Worker {
    id: usize,
    source: Client,
    target: Client,
    target_setup: String,
}

impl Worker {
    async fn open(ctx: &Ctx, id: usize, snapshot: &str, post: &ParsedDump) -> Result<Self> {
        let o = &ctx.opts;
        let (source, target) = connect_pair(o).await?;
        // The dump's own session settings (search_path, check_function_bodies …) first, so
        // post-data items run as they would under psql.
        let target_setup = format!(
            "{}\nSET synchronous_commit = off; SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0; SET maintenance_work_mem = {};",
            post.preamble,
            crate::sql::literal(&o.maintenance_work_mem)
        );
        let w = Worker {
            id,
            source,
            target,
            target_setup,
        };
        w.setup(snapshot).await?;
        Ok(w)
    }

    async fn setup(&self, snapshot: &str) -> Result<()> {
        snapshot::import(&self.source, snapshot).await?;
        self.target
            .batch_execute(&self.target_setup)
            .await
            .map_err(|e| Error::sql(Side::Target, "set up a session", e))
    }

    async fn reconnect(&mut self, ctx: &Ctx, snapshot: &Snapshot) -> Result<()> {
        if !snapshot.is_alive() {
            return Err(Error::Preflight(
                "the session holding the snapshot was lost, so the copy cannot go on \
                 consistently; run again with --resume to finish (not consistent) or \
                 --drop-existing to start over"
                    .into(),
            ));
        }
        (self.source, self.target) = connect_pair(&ctx.opts).await?;
        self.setup(snapshot.name()).await
    }

    async fn run_unit(
        &self,
        ctx: &Ctx,
        unit: &Unit,
        catalog: &Catalog,
        tracker: &Tracker,
    ) -> Result<(u64, u64)> {
        let table = &catalog.tables[unit.table];
        let format = if ctx.opts.format == FormatChoice::Auto && table.binary_ok {
            Format::Binary
        } else {
            Format::Text
        };
        // A whole-table unit may empty the table in its own transaction, which lets COPY FREEZE
        // write frozen, all-visible rows: no hint-bit rewrite or freeze vacuum later.
        let freeze = unit.slice.from_block.is_none() && unit.slice.to_block.is_none();
        let begin = if freeze {
            format!("BEGIN; TRUNCATE ONLY {}", table.name.quoted())
        } else {
            "BEGIN".to_owned()
        };
        let t = Side::Target;
        self.target
            .batch_execute(&begin)
            .await
            .map_err(|e| Error::sql(t, format!("start copying {}", table.name), e))?;
        let result = async {
            let out_sql = copy_out_sql(table, &unit.slice, format);
            let in_sql = copy_in_sql(table, format, freeze);
            let (rows, bytes) = pump(&self.source, &self.target, &out_sql, &in_sql, |n| {
                tracker.bytes.fetch_add(n, Ordering::Relaxed);
                if let Some(entry) = lock(&tracker.active).get_mut(&self.id) {
                    entry.1 += n;
                }
            })
            .await?;
            self.target
                .batch_execute(&format!(
                    "{} COMMIT;",
                    target::record_unit_sql(&unit.id, rows, bytes)
                ))
                .await
                .map_err(|e| Error::sql(t, format!("commit {}", unit.id), e))?;
            Ok((rows, bytes))
        }
        .await;
        if result.is_err() {
            let _ = self.target.batch_execute("ROLLBACK").await;
        }
        result.map_err(|e| match e {
            Error::Sql {
                side,
                context,
                message,
                code,
            } => Error::Sql {
                side,
                context: format!("{context} ({})", unit.id),
                message,
                code,
            },
            other => other,
        })
    }

    async fn run_item(&self, _ctx: &Ctx, item: &Item) -> Result<()> {
        let record = item
            .key
            .as_deref()
            .map(target::record_step_sql)
            .unwrap_or_default();
        let sql = if item.key.is_some() {
            format!("BEGIN;\n{}\n{record}\nCOMMIT;", item.sql)
        } else {
            item.sql.clone()
        };
        let result = self.target.batch_execute(&sql).await;
        if let Err(e) = result {
            let _ = self.target.batch_execute("ROLLBACK").await;
            return Err(Error::sql(Side::Target, item.label.clone(), e));
        }
        Ok(())
    }
}

async fn run_pool(
    ctx: &Arc<Ctx>,
    workers: Vec<Worker>,
    sched: Sched,
    snapshot: &Arc<Snapshot>,
    catalog: Arc<Catalog>,
    units: Arc<Vec<Unit>>,
    tracker: Arc<Tracker>,
) -> Result<Vec<Worker>> {
    let sched = Arc::new(Mutex::new(sched));
    let notify = Arc::new(Notify::new());
    let mut set = tokio::task::JoinSet::new();
    for mut worker in workers {
        let (ctx, sched, notify, catalog, units, tracker) = (
            ctx.clone(),
            sched.clone(),
            notify.clone(),
            catalog.clone(),
            units.clone(),
            tracker.clone(),
        );
        let snapshot = snapshot.clone();
        set.spawn(async move {
            loop {
                let task = {
                    let mut s = lock(&sched);
                    if s.error.is_some() {
                        break;
                    }
                    match s.tasks.pop_front() {
                        Some(t) => {
                            s.in_flight += 1;
                            Some(t)
                        }
                        None if s.in_flight == 0 => break,
                        None => None,
                    }
                };
                let Some(task) = task else {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), notify.notified()).await;
                    continue;
                };
                let outcome = run_task(
                    &ctx,
                    &mut worker,
                    &task,
                    &snapshot,
                    &catalog,
                    &units,
                    &tracker,
                )
                .await;
                let mut s = lock(&sched);
                s.in_flight -= 1;
                match outcome {
                    Ok((rows, bytes)) => {
                        if let Task::Unit(i) = task {
                            let table = &catalog.tables[units[i].table].name;
                            let total = s.copied.entry(table.clone()).or_default();
                            total.0 += rows;
                            total.1 += bytes;
                            let left = s.remaining.get_mut(table).map(|n| {
                                *n -= 1;
                                *n
                            });
                            if left == Some(0) {
                                let (rows, bytes) = s.copied.remove(table).unwrap_or_default();
                                ctx.emit(Event::TableCopied {
                                    table: table.to_string(),
                                    rows,
                                    bytes,
                                });
                                if let Some(items) = s.waiting.remove(table) {
                                    for item in items.into_iter().rev() {
                                        s.tasks.push_front(Task::Item(item));
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if s.error.is_none() {
                            s.error = Some(e);
                        }
                    }
                }
                drop(s);
                notify.notify_waiters();
            }
            worker
        });
    }
    let mut back = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(w) => back.push(w),
            Err(e) => {
                lock(&sched)
                    .error
                    .get_or_insert(Error::Usage(format!("a worker task failed: {e}")));
            }
        }
    }
    back.sort_by_key(|w| w.id);
    let error = lock(&sched).error.take();
    match error {
        Some(e) => Err(e),
        None => Ok(back),
    }
}

/// Run one task with retries: on a retryable error, reconnect the pair (re-importing the
/// snapshot) and try again with backoff.
async fn run_task(
    ctx: &Ctx,
    worker: &mut Worker,
    task: &Task,
    snapshot: &Snapshot,
    catalog: &Catalog,
    units: &[Unit],
    tracker: &Tracker,
) -> Result<(u64, u64)> {
    let label = match task {
        Task::Unit(i) => units[*i].id.clone(),
        Task::Item(item) => item.label.clone(),
    };
    let est = match task {
        Task::Unit(i) => units[*i].est_bytes,
        Task::Item(_) => 0,
    };
    let mut attempt = 0;
    loop {
        let started = Instant::now();
        lock(&tracker.active).insert(worker.id, (label.clone(), 0, est));
        let result = match task {
            Task::Unit(i) => worker
                .run_unit(ctx, &units[*i], catalog, tracker)
                .await
                .inspect(|(rows, _)| {
                    tracker.rows.fetch_add(*rows, Ordering::Relaxed);
                    tracker.estimate_done.fetch_add(est, Ordering::Relaxed);
                    tracker.units_done.fetch_add(1, Ordering::Relaxed);
                }),
            Task::Item(item) => worker.run_item(ctx, item).await.map(|()| {
                if item.key.is_some() {
                    tracker.items_done.fetch_add(1, Ordering::Relaxed);
                }
                (0, 0)
            }),
        };
        lock(&tracker.active).remove(&worker.id);
        match result {
            Ok(done) => {
                tracing::info!(worker = worker.id, task = %label, rows = done.0, bytes = done.1,
                    secs = started.elapsed().as_secs_f64(), "done");
                return Ok(done);
            }
            Err(e) if e.is_retryable() && attempt < ctx.opts.retries => {
                attempt += 1;
                ctx.emit(Event::Retrying {
                    what: label.clone(),
                    attempt,
                    error: e.to_string(),
                });
                tracing::warn!(unit = %label, attempt, error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(500 * (1 << attempt.min(5)))).await;
                worker.reconnect(ctx, snapshot).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sequence values and large objects, read under the snapshot.
/// Set each of `sequences` on the target to its value on the source (read in whatever
/// snapshot `source` is in); returns how many the target has.
pub(crate) async fn copy_sequences(
    source: &Client,
    target: &Client,
    sequences: impl Iterator<Item = &QualName>,
) -> Result<usize> {
    let mut n = 0;
    for seq in sequences {
        let row = source
            .query_one(
                &format!("SELECT last_value, is_called FROM {}", seq.quoted()),
                &[],
            )
            .await
            .map_err(|e| Error::sql(Side::Source, format!("read sequence {seq}"), e))?;
        let (value, called): (i64, bool) = (row.get(0), row.get(1));
        let set = target
            .query_opt(
                "SELECT pg_catalog.setval(to_regclass($1), $2, $3) WHERE to_regclass($1) IS NOT NULL",
                &[&seq.quoted(), &value, &called],
            )
            .await
            .map_err(|e| Error::sql(Side::Target, format!("set sequence {seq}"), e))?;
        n += usize::from(set.is_some());
    }
    Ok(n)
}

async fn finish(
    ctx: &Ctx,
    snapshot: &Snapshot,
    catalog: &Catalog,
    target_client: &Client,
    done: &HashSet<String>,
) -> Result<()> {
    let o = &ctx.opts;
    let source = connect(&o.source, Side::Source).await?;
    snapshot::import(&source, snapshot.name()).await?;
    let (s, t) = (Side::Source, Side::Target);
    let sequences = copy_sequences(
        &source,
        target_client,
        catalog.sequences.iter().filter(|q| o.filter.selects(q)),
    )
    .await?;
    let mut large_objects = 0;
    const CHUNK: i32 = 1 << 20;
    for &oid in &catalog.large_objects {
        let key = format!("lo:{oid}");
        if done.contains(&key) {
            continue;
        }
        target_client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::sql(t, "copy large objects", e))?;
        let copy_one = async {
            target_client
                .execute(
                    "SELECT lo_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = $1)",
                    &[&oid],
                )
                .await
                .map_err(|e| Error::sql(t, format!("create large object {oid}"), e))?;
            let mut offset: i64 = 0;
            loop {
                let data: Vec<u8> = source
                    .query_one("SELECT lo_get($1, $2, $3)", &[&oid, &offset, &CHUNK])
                    .await
                    .map_err(|e| Error::sql(s, format!("read large object {oid}"), e))?
                    .get(0);
                if !data.is_empty() {
                    target_client
                        .execute("SELECT lo_put($1, $2, $3)", &[&oid, &offset, &data])
                        .await
                        .map_err(|e| Error::sql(t, format!("write large object {oid}"), e))?;
                }
                offset += data.len() as i64;
                if data.len() < CHUNK as usize {
                    break;
                }
            }
            target_client
                .batch_execute(&format!("{} COMMIT;", target::record_step_sql(&key)))
                .await
                .map_err(|e| Error::sql(t, format!("commit large object {oid}"), e))
        };
        if let Err(e) = copy_one.await {
            let _ = target_client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        large_objects += 1;
    }
    let mut r = lock(&ctx.report);
    r.sequences = sequences;
    r.large_objects = large_objects;
    Ok(())
}

//! The copy itself, once the snapshot is taken: the plan (fresh, or the interrupted run's),
//! pre-data, the pool's passes (data with each table's indexes as soon as its rows are in,
//! the constraints attached, foreign keys, the rest of post-data), sequences and large
//! objects, ANALYZE, and the copy recorded as complete.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::finish;
use super::pool::{run_pool, with_retries, Counters, Pair, Shared};
use super::post_data::{classify, Classified, Statement};
use super::preflight::Preflight;
use super::queue::Queue;
use super::refresh;
use super::source::Snap;
use super::{lock, Ctx};
use crate::catalog::Catalog;
use crate::checks;
use crate::connect::connect;
use crate::database;
use crate::error::{Error, Result, Side};
use crate::filter::QualName;
use crate::plan::{self, SplitPolicy};
use crate::progress::{Event, Phase, PlanSummary};
use crate::schema::{self, DumpOptions};
use crate::target;

/// The step recorded when this run created the target database (it then gets the source's
/// owner too, on a resumed run as well).
const CREATED_DATABASE_STEP: &str = "created-database";

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
        if pre.refresh.is_none() {
            ctx.warn(
                "resuming an interrupted run: its finished units are kept and the rest are \
                 copied from a new snapshot, so rows copied before and after the interruption \
                 reflect different moments of the source; for a consistent copy start over with \
                 --drop-existing"
                    .into(),
            );
        }
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
    if pre.create_with.is_some() {
        bookkeeping
            .batch_execute(&target::record_step_sql(CREATED_DATABASE_STEP))
            .await
            .map_err(|e| Error::sql(Side::Target, "record the database as created", e))?;
    }
    Ok((units, HashSet::new()))
}

/// A resumed run: the tables the interrupted one finished are brought up to this run's
/// snapshot ([`refresh`]) before the rest are copied under it.
async fn bring_to_snapshot(ctx: &Ctx, shared: &Shared, replica_role: bool) -> Result<()> {
    let finished = refresh::finished_tables(&shared.units);
    if finished.is_empty() {
        return Ok(());
    }
    let done = refresh::refresh(
        ctx,
        &shared.snapshot,
        &shared.catalog,
        &shared.units,
        &finished,
        replica_role,
    )
    .await?;
    tracing::info!(?done, "brought the finished tables up to the new snapshot");
    ctx.warn(format!(
        "resuming an interrupted run: the {} table(s) it had finished were compared with the \
         source as of a new snapshot ({} key ranges) and {} range(s) that had changed since were \
         copied again ({} rows); the rest are copied from the same snapshot, so the whole copy \
         holds one moment of the source",
        done.tables, done.ranges, done.copied_again, done.rows
    ));
    Ok(())
}

/// A resumed run copies the tables the interrupted one planned; a table created on the source
/// since (no unit of it is recorded) has no definition on the target either. It is left out of
/// the rest of the run, its post-data objects and ANALYZE too, and named.
fn leave_out_unplanned(
    ctx: &Ctx,
    pre: &Preflight,
    catalog: &Catalog,
    mut copy: Vec<bool>,
    mut excluded: Vec<QualName>,
    units: &[plan::Unit],
) -> (Vec<bool>, Vec<QualName>) {
    if !pre.resumed {
        return (copy, excluded);
    }
    let planned: HashSet<usize> = units.iter().map(|u| u.table).collect();
    let mut unplanned = Vec::new();
    for (i, c) in copy.iter_mut().enumerate() {
        if *c && !planned.contains(&i) {
            *c = false;
            unplanned.push(catalog.tables[i].name.to_string());
            excluded.push(catalog.tables[i].name.clone());
        }
    }
    if !unplanned.is_empty() {
        ctx.warn(format!(
            "{}: {}, created on the source after the interrupted run had planned its copy; \
             copy them with pg_dump, or start over with --drop-existing",
            if pre.sync {
                "neither copied nor replicated"
            } else {
                "not copied"
            },
            checks::name_list(&unplanned, 10)
        ));
    }
    (copy, excluded)
}

/// Give the target database the source database's own properties ([`database`]), now that
/// nothing of the copy is left to run under them; then check that a session can still start
/// there (a preload library the target lacks would lock everyone out) and, last, give it the
/// connection limit. `created`: this run created the database, so it gets the source's owner.
async fn copy_database_properties(ctx: &Ctx, pre: &Preflight, created: bool) -> Result<()> {
    let o = &ctx.opts;
    with_retries(ctx, "copy the database's own properties", || async {
        let source = connect(&o.source, Side::Source).await?;
        let props = database::read(&source).await?;
        let t = connect(&o.target, Side::Target).await?;
        let owner = database::owner(&t).await?;
        let to = database::Apply {
            database: &o.target.dbname,
            owner: &owner,
            set_owner: created && !o.no_owner,
            no_privileges: o.no_privileges,
        };
        let mut warnings = database::apply(&t, &props, &to).await?;
        match connect(&o.target, Side::Target).await {
            Err(e) if !e.is_retryable() && props.has_settings() => {
                database::reset_settings(&t, &props, &o.target.dbname).await?;
                warnings.push(format!(
                    "the source database's settings were taken back from the target database: no \
                     session could start there under them ({e}); give the target the settings it \
                     can hold by hand (ALTER DATABASE … SET)"
                ));
            }
            Err(e) => return Err(e),
            Ok(probe) => drop(probe),
        }
        warnings.extend(database::apply_connection_limit(&t, &props, &o.target.dbname).await?);
        // Not created by this run, the database kept its owner.
        if !created && !o.no_owner && props.owner != owner {
            warnings.push(format!(
                "the target database {db} belongs to {owner}, as it did before this run, and \
                 the source's to {src}{acts}; if the application relies on it, run `ALTER \
                 DATABASE {qdb} OWNER TO {qsrc}` on the target as a superuser",
                db = o.target.dbname,
                src = props.owner,
                acts = if pre.target_major >= 15 {
                    " (the owner of a database also owns, from 15, every schema owned by \
                     pg_database_owner, as public is by default)"
                } else {
                    ""
                },
                qdb = crate::sql::ident(&o.target.dbname),
                qsrc = crate::sql::ident(&props.owner),
            ));
        }
        warnings.into_iter().for_each(|w| ctx.warn(w));
        Ok(())
    })
    .await
}

pub(super) async fn run(ctx: &Arc<Ctx>, pre: &Preflight, snap: Snap) -> Result<()> {
    let o = &ctx.opts;
    let Snap {
        snapshot,
        catalog,
        copy,
        excluded,
        slot: _,
    } = snap;
    let (units, done_steps) = plan_units(ctx, pre, &catalog, &copy).await?;
    let (copy, excluded) = leave_out_unplanned(ctx, pre, &catalog, copy, excluded, &units);
    {
        let mut r = lock(&ctx.report);
        r.resumed = pre.resumed;
        r.mixed_moments = pre.resumed && pre.refresh.is_none();
        r.tables = copy.iter().filter(|c| **c).count();
        r.units_total = units.len();
    }

    let dump_opts = DumpOptions {
        excluded,
        no_owner: o.no_owner,
        no_privileges: o.no_privileges,
        target_major: pre.target_major,
        public: pre.public.clone(),
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
        .await?
        .into_iter()
        .for_each(|w| ctx.warn(w));
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
        counters: Arc::new(Counters::new(&units)),
        units: Arc::new(units),
    };
    let (catalog, units, counters) = (&shared.catalog, &shared.units, &shared.counters);

    // Data, and each table's indexes and constraints as soon as its rows are in.
    let mut to_copy = Vec::new();
    for (i, u) in units.iter().enumerate() {
        if u.done {
            ctx.rows_moved();
        } else {
            to_copy.push((i, catalog.tables[u.table].name.clone()));
        }
    }
    let queue = Queue::for_data(to_copy, by_table);
    let ticker = counters.clone().start_ticker(ctx.clone());
    let data = ctx
        .phase(Phase::Data, async {
            if let Some(replica_role) = pre.refresh {
                bring_to_snapshot(ctx, &shared, replica_role).await?;
            }
            run_pool(ctx, pairs, queue, &shared).await
        })
        .await;
    ticker.abort();
    counters.emit_progress(ctx);
    let pairs = data?;

    // Constraints built as indexes become constraints; then foreign keys (in parallel: every
    // index and key they need exists now); then the rest in order.
    let post_phase = async {
        let mut pairs = pairs;
        for statements in [attach, foreign_keys] {
            pairs = run_pool(ctx, pairs, Queue::of_statements(statements), &shared).await?;
        }
        // In dump order: one pair works the queue.
        let mut rest_pairs = pairs;
        let others = rest_pairs.split_off(1.min(rest_pairs.len()));
        let first = run_pool(ctx, rest_pairs, Queue::of_statements(rest), &shared).await?;
        Ok::<_, Error>(first.into_iter().chain(others).collect::<Vec<_>>())
    };
    let pairs = ctx.phase(Phase::PostData, post_phase).await?;
    lock(&ctx.report).post_data_items = counters.items_done.load(Ordering::Relaxed);

    ctx.phase(
        Phase::Finish,
        finish::finish(
            ctx,
            &shared.snapshot,
            catalog,
            &done_steps,
            pre.refresh.is_some(),
        ),
    )
    .await?;

    // ANALYZE every copied table, in parallel.
    let analyze = catalog
        .tables
        .iter()
        .zip(&copy)
        .filter(|(_, c)| **c)
        .map(|(t, _)| Statement {
            key: None,
            label: format!("analyze {}", t.name),
            sql: format!("ANALYZE {}", t.name.quoted()),
            cost: 0,
            is_index: false,
        });
    ctx.phase(
        Phase::Analyze,
        run_pool(ctx, pairs, Queue::of_statements(analyze), &shared),
    )
    .await?;

    // Whether this run created the database is recorded, so that a resumed run knows it too.
    let created = pre.create_with.is_some() || done_steps.contains(CREATED_DATABASE_STEP);
    copy_database_properties(ctx, pre, created).await?;

    with_retries(ctx, "record the copy as complete", || async {
        let t = connect(&o.target, Side::Target).await?;
        t.batch_execute(&target::record_step_sql(target::COMPLETE_STEP))
            .await
            .map_err(|e| Error::sql(Side::Target, "record the copy as complete", e))
    })
    .await?;
    ctx.made(|m| m.complete = true);
    let mut r = lock(&ctx.report);
    r.rows = counters.rows.load(Ordering::Relaxed);
    r.bytes = counters.bytes.load(Ordering::Relaxed);
    r.units_run = counters.units_done.load(Ordering::Relaxed);
    Ok(())
}

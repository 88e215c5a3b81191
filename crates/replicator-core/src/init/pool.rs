//! The pool: `jobs` connection pairs working one queue of units (a table or a block range of
//! one) and post-data statements ([`Queue`]), with retries. The pool's own task owns the queue
//! and hands each idle pair the next task; a pair comes back with its outcome when the task
//! ends, so nothing is shared between them but the counters.
//!
//! Every unit and every recorded item claims its record as the first statement of the
//! transaction that does it ([`target::claim_unit`], [`target::claim_step`]), so a retry after
//! a lost connection, or a lost reply to COMMIT, finds out what committed before it does
//! anything: an attempt whose predecessor committed does nothing, one whose predecessor is
//! still committing waits for it, and one whose predecessor rolled back does the work in full.
//! No range is ever appended twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::post_data::Statement;
use super::queue::{Queue, Task};
use super::{lock, Ctx, FormatChoice};
use crate::catalog::Catalog;
use crate::connect::connect;
use crate::copy::{copy_in_sql, copy_out_sql, pump, Format};
use crate::error::{Error, Result, Side};
use crate::plan::Unit;
use crate::progress::{DataProgress, Event};
use crate::schema::ParsedDump;
use crate::snapshot::{self, Snapshot};
use crate::target::{self, Claim};

/// Live counters of the data phase.
pub(crate) struct Counters {
    started: Instant,
    pub bytes: AtomicU64,
    pub rows: AtomicU64,
    estimate_done: AtomicU64,
    estimate_total: u64,
    pub units_done: AtomicUsize,
    units_total: usize,
    pub items_done: AtomicUsize,
    active: Mutex<HashMap<usize, (String, u64, u64)>>,
}

impl Counters {
    pub fn new(units: &[Unit]) -> Self {
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

    pub fn emit_progress(&self, ctx: &Ctx) {
        ctx.emit(Event::Progress(self.snapshot()));
    }

    pub fn start_ticker(self: Arc<Self>, ctx: Arc<Ctx>) -> tokio::task::JoinHandle<()> {
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
async fn connect_pair(ctx: &Ctx) -> Result<(Client, Client)> {
    let o = &ctx.opts;
    tokio::try_join!(
        connect(&o.source, Side::Source),
        connect(&o.target, Side::Target)
    )
}

/// The pause before attempt `attempt` (1, 2, …): doubling from one second, at most 30 s, with
/// jitter so that the pool's pairs do not reconnect in step after a server restart.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500) * (1u32 << attempt.min(6));
    let base = base.min(Duration::from_secs(30));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Between 3/4 and 5/4 of the base.
    base.mul_f64(0.75 + f64::from(nanos % 1000) / 2000.0)
}

/// Say that `what` failed with `error` and will be tried again (attempt `attempt`), then wait.
async fn retry_after(ctx: &Ctx, what: &str, attempt: u32, error: &Error) {
    ctx.emit(Event::Retrying {
        what: what.to_owned(),
        attempt,
        error: error.to_string(),
    });
    tracing::warn!(what, attempt, error = %error, "retrying");
    tokio::time::sleep(backoff(attempt)).await;
}

/// Run `work` (which opens its own sessions) until it succeeds, a non-retryable error comes,
/// or `ctx.opts.retries` retries are spent. `work` must be idempotent: every step it records
/// claims its record first.
pub(crate) async fn with_retries<T, F, Fut>(ctx: &Ctx, what: &str, mut work: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match work().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < ctx.opts.retries => {
                attempt += 1;
                retry_after(ctx, what, attempt, &e).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The target session's backend: (pid, start time), which no later session shares.
pub(crate) async fn backend(target: &Client) -> Result<(i32, String)> {
    let row = target
        .query_one(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "set up a session", e))?;
    Ok((row.get(0), row.get(1)))
}

/// End the target backend `previous` of a lost session if it is still there (the same pid and
/// start time, so never another session that reused the pid), and wait until it is gone: its
/// transaction then has committed or rolled back, and a retry sees which.
pub(crate) async fn end_backend(target: &Client, previous: &(i32, String)) -> Result<()> {
    let fail = |e| Error::sql(Side::Target, "end the lost session", e);
    let (pid, started) = previous;
    for _ in 0..600 {
        let alive = target
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start::text = $2",
                &[pid, started],
            )
            .await
            .map_err(fail)?
            .is_some();
        if !alive {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Preflight(format!(
        "the target session {pid} of a lost connection does not end: end it with SELECT \
         pg_terminate_backend({pid}) on the target and run again with --resume"
    )))
}

/// One connection pair of the pool.
pub(crate) struct Pair {
    id: usize,
    source: Client,
    target: Client,
    target_setup: String,
    /// The target session's backend (pid, start time): after a lost connection it may live on
    /// (a half-open socket lasts until the server's keepalive gives up, hours by default),
    /// holding the locks of its unfinished transaction, which the retry would wait behind.
    target_backend: (i32, String),
}

/// What a unit's attempt did.
enum UnitDone {
    /// Copied now: (rows, bytes).
    Copied(u64, u64),
    /// An earlier attempt had committed it: its recorded (rows, bytes).
    Earlier(u64, u64),
}

impl Pair {
    pub async fn open(ctx: &Ctx, id: usize, snapshot: &str, post: &ParsedDump) -> Result<Self> {
        let (source, target) = connect_pair(ctx).await?;
        // The dump's own session settings (search_path, check_function_bodies …) first, so
        // post-data items run as they would under psql.
        let target_setup = format!(
            "{}\nSET synchronous_commit = off; SET maintenance_work_mem = {};",
            post.preamble,
            crate::sql::literal(&ctx.opts.maintenance_work_mem)
        );
        let mut p = Pair {
            id,
            source,
            target,
            target_setup,
            target_backend: (0, String::new()),
        };
        p.setup(snapshot).await?;
        Ok(p)
    }

    async fn setup(&mut self, snapshot: &str) -> Result<()> {
        snapshot::import(&self.source, snapshot).await?;
        self.target
            .batch_execute(&self.target_setup)
            .await
            .map_err(|e| Error::sql(Side::Target, "set up a session", e))?;
        self.target_backend = backend(&self.target).await?;
        Ok(())
    }

    async fn reconnect(&mut self, ctx: &Ctx, snapshot: &Snapshot) -> Result<()> {
        if !snapshot.is_alive() {
            return Err(Error::SnapshotLost(
                "the session holding the snapshot was lost, so the copy cannot go on under it; \
                 run again with --resume to finish under a new snapshot (with replication the \
                 tables already copied are brought up to it; without, they keep the old \
                 moment) or --drop-existing to start over"
                    .into(),
            ));
        }
        (self.source, self.target) = connect_pair(ctx).await?;
        let previous = self.target_backend.clone();
        self.setup(snapshot.name()).await?;
        end_backend(&self.target, &previous).await
    }

    async fn run_unit(
        &self,
        ctx: &Ctx,
        unit: &Unit,
        catalog: &Catalog,
        counters: &Counters,
    ) -> Result<UnitDone> {
        let table = &catalog.tables[unit.table];
        let format = if ctx.opts.format == FormatChoice::Auto && table.binary_ok {
            Format::Binary
        } else {
            Format::Text
        };
        // A whole-table unit may empty the table in its own transaction, which lets COPY FREEZE
        // write frozen, all-visible rows: no hint-bit rewrite or freeze vacuum later.
        let freeze = unit.slice.from_block.is_none() && unit.slice.to_block.is_none();
        let t = Side::Target;
        self.target
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::sql(t, format!("start copying {}", table.name), e))?;
        let result = async {
            if target::claim_unit(&self.target, &unit.id).await? == Claim::AlreadyDone {
                return Ok(None);
            }
            if freeze {
                self.target
                    .batch_execute(&format!("TRUNCATE ONLY {}", table.name.quoted()))
                    .await
                    .map_err(|e| Error::sql(t, format!("empty {}", table.name), e))?;
            }
            let out_sql = copy_out_sql(table, &unit.slice, format);
            let in_sql = copy_in_sql(table, format, freeze);
            let (rows, bytes) = pump(&self.source, &self.target, &out_sql, &in_sql, |n| {
                counters.bytes.fetch_add(n, Ordering::Relaxed);
                if let Some(entry) = lock(&counters.active).get_mut(&self.id) {
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
            Ok(Some((rows, bytes)))
        }
        .await;
        match result {
            Ok(Some((rows, bytes))) => Ok(UnitDone::Copied(rows, bytes)),
            Ok(None) => {
                let _ = self.target.batch_execute("ROLLBACK").await;
                let (rows, bytes) = target::unit_counts(&self.target, &unit.id).await?;
                tracing::info!(unit = %unit.id, "committed by an earlier attempt");
                Ok(UnitDone::Earlier(rows, bytes))
            }
            Err(e) => {
                let _ = self.target.batch_execute("ROLLBACK").await;
                Err(match e {
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
        }
    }

    /// Run one item; a recorded one claims its key first and is skipped when an earlier
    /// attempt committed it.
    pub async fn run_item(&self, item: &Statement) -> Result<()> {
        let fail = |e| Error::sql(Side::Target, item.label.clone(), e);
        let Some(key) = &item.key else {
            return self.target.batch_execute(&item.sql).await.map_err(fail);
        };
        self.target.batch_execute("BEGIN").await.map_err(fail)?;
        let result = async {
            if target::claim_step(&self.target, key).await? == Claim::AlreadyDone {
                return Ok(false);
            }
            self.target
                .batch_execute(&format!("{}\nCOMMIT;", item.sql))
                .await
                .map_err(fail)?;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::info!(item = %item.label, "committed by an earlier attempt");
                self.target.batch_execute("ROLLBACK").await.map_err(fail)
            }
            Err(e) => {
                let _ = self.target.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }
}

/// What every pass of the pool shares.
pub(crate) struct Shared {
    pub snapshot: Arc<Snapshot>,
    pub catalog: Arc<Catalog>,
    pub units: Arc<Vec<Unit>>,
    pub counters: Arc<Counters>,
}

pub(crate) async fn run_pool(
    ctx: &Arc<Ctx>,
    pairs: Vec<Pair>,
    mut queue: Queue,
    shared: &Shared,
) -> Result<Vec<Pair>> {
    // Idle pairs, the lowest id on top: a pass with one task uses pair 0.
    let mut idle = pairs;
    idle.sort_by_key(|p| std::cmp::Reverse(p.id));
    let mut running = tokio::task::JoinSet::new();
    let mut error: Option<Error> = None;
    loop {
        // After a failure nothing new starts; what runs finishes (or fails) first.
        while error.is_none() && !idle.is_empty() {
            let Some(task) = queue.next() else { break };
            let Some(mut pair) = idle.pop() else { break };
            let (ctx, snapshot, catalog, units, counters) = (
                ctx.clone(),
                shared.snapshot.clone(),
                shared.catalog.clone(),
                shared.units.clone(),
                shared.counters.clone(),
            );
            running.spawn(crate::connect::Sessions::carry(async move {
                let outcome = run_task(
                    &ctx, &mut pair, &task, &snapshot, &catalog, &units, &counters,
                )
                .await;
                (pair, task, outcome)
            }));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        match joined {
            Ok((pair, task, outcome)) => {
                idle.push(pair);
                idle.sort_by_key(|p| std::cmp::Reverse(p.id));
                match (outcome, task) {
                    (Ok((rows, bytes)), Task::Unit(i)) => {
                        let table = &shared.catalog.tables[shared.units[i].table].name;
                        if let Some((rows, bytes)) = queue.unit_done(table, rows, bytes) {
                            ctx.emit(Event::TableCopied {
                                table: table.to_string(),
                                rows,
                                bytes,
                            });
                        }
                    }
                    (Ok(_), Task::Statement(_)) => {}
                    // The run fails with the first error; later ones (often its consequences)
                    // are logged rather than lost.
                    (Err(e), _) if error.is_none() => error = Some(e),
                    (Err(e), _) => tracing::warn!(code = e.code(), error = %e, "also failed"),
                }
            }
            Err(e) => {
                let defect = Error::Internal(format!(
                    "a copy task failed ({e}); this is a defect of the tool, please report \
                     it; the target keeps what finished, for --resume"
                ));
                match &error {
                    None => error = Some(defect),
                    Some(_) => tracing::warn!(error = %defect, "also failed"),
                }
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => {
            idle.reverse();
            Ok(idle)
        }
    }
}

/// Run one task with retries: on a retryable error, reconnect the pair (re-importing the
/// snapshot) and try again with backoff; a reconnect that fails counts as an attempt.
async fn run_task(
    ctx: &Ctx,
    pair: &mut Pair,
    task: &Task,
    snapshot: &Snapshot,
    catalog: &Catalog,
    units: &[Unit],
    counters: &Counters,
) -> Result<(u64, u64)> {
    let label = match task {
        Task::Unit(i) => units[*i].id.clone(),
        Task::Statement(item) => item.label.clone(),
    };
    let est = match task {
        Task::Unit(i) => units[*i].est_bytes,
        Task::Statement(_) => 0,
    };
    let mut attempt = 0;
    loop {
        let started = Instant::now();
        lock(&counters.active).insert(pair.id, (label.clone(), 0, est));
        let result = async {
            if attempt > 0 {
                pair.reconnect(ctx, snapshot).await?;
            }
            match task {
                Task::Unit(i) => {
                    let done = pair.run_unit(ctx, &units[*i], catalog, counters).await?;
                    let (rows, bytes) = match done {
                        UnitDone::Copied(r, b) | UnitDone::Earlier(r, b) => (r, b),
                    };
                    ctx.rows_moved();
                    counters.rows.fetch_add(rows, Ordering::Relaxed);
                    counters.estimate_done.fetch_add(est, Ordering::Relaxed);
                    counters.units_done.fetch_add(1, Ordering::Relaxed);
                    Ok((rows, bytes))
                }
                Task::Statement(item) => {
                    pair.run_item(item).await?;
                    if item.key.is_some() {
                        counters.items_done.fetch_add(1, Ordering::Relaxed);
                        // After the data phase no ticker runs: each item finished is progress
                        // (a remote worker's stall detection watches it).
                        counters.emit_progress(ctx);
                    }
                    Ok((0, 0))
                }
            }
        }
        .await;
        let result: Result<(u64, u64)> = result;
        lock(&counters.active).remove(&pair.id);
        match result {
            Ok(done) => {
                tracing::info!(pair = pair.id, task = %label, rows = done.0, bytes = done.1,
                    secs = started.elapsed().as_secs_f64(), "done");
                return Ok(done);
            }
            Err(e) if e.is_retryable() && attempt < ctx.opts.retries => {
                attempt += 1;
                retry_after(ctx, &label, attempt, &e).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..10 {
            let b = backoff(attempt);
            let base = (Duration::from_millis(500) * (1u32 << attempt.min(6)))
                .min(Duration::from_secs(30));
            assert!(
                b >= base.mul_f64(0.75) && b <= base.mul_f64(1.25),
                "{attempt}: {b:?}"
            );
        }
        assert!(backoff(20) <= Duration::from_millis(37_500));
    }
}

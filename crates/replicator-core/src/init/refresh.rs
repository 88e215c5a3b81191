//! `--resume` under a new snapshot: the tables the interrupted run finished hold the source as
//! of its snapshot, the rest will be copied as of the new one. Each finished table is compared
//! with the source as of the new snapshot, range by range of its primary key (as `verify`
//! compares), and the ranges that differ are copied again: every table then holds the one
//! moment of the source that the new snapshot sees, and a new slot's replication starts from
//! it without a gap or an overlap. See docs/engine.md, "Resume".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::stream::{self, TryStreamExt};
use tokio_postgres::Client;

use super::pool::{backend, end_backend, with_retries};
use super::{Ctx, FormatChoice};
use crate::catalog::{Catalog, Table};
use crate::copy::{self, Format};
use crate::error::{Error, Result, Side};
use crate::plan::Unit;
use crate::snapshot::{self, Snapshot};
use crate::verify::{self, Bound};

/// Rows per compared range: as `verify`'s default.
const RANGE_ROWS: u64 = 100_000;
/// A range that differs is compared again in parts of this many rows, and only the parts that
/// differ are copied again: a few changed rows cost about this many rows each, not a range.
const PART_ROWS: u64 = 1_000;

/// What bringing the finished tables up to the new snapshot did.
#[derive(Debug, Default)]
pub(super) struct Refreshed {
    /// Finished tables compared.
    pub tables: usize,
    /// Key ranges (a table without a primary key counts as one) compared.
    pub ranges: u64,
    /// Ranges or parts of ranges that differed and were copied again.
    pub copied_again: u64,
    /// Rows copied again.
    pub rows: u64,
}

/// The indexes into `catalog.tables` of the tables whose every unit an earlier run finished.
pub(super) fn finished_tables(units: &[Unit]) -> Vec<usize> {
    let mut tables: Vec<usize> = units.iter().map(|u| u.table).collect();
    tables.sort_unstable();
    tables.dedup();
    tables.retain(|t| units.iter().filter(|u| u.table == *t).all(|u| u.done));
    tables
}

/// Bring every table of `tables` to `snapshot`, `ctx.opts.jobs` tables at a time. With
/// `replica_role` the target sessions run with `session_replication_role = replica`, so that
/// foreign keys, triggers and rules that a later phase of the interrupted run had already made
/// do not act on the rows put back (the preflight asks for it only where it is allowed).
///
/// # Errors
/// The first failure after the retries: [`Error::Sql`], [`Error::Connect`].
pub(super) async fn refresh(
    ctx: &Ctx,
    snapshot: &Snapshot,
    catalog: &Catalog,
    units: &[Unit],
    tables: &[usize],
    replica_role: bool,
) -> Result<Refreshed> {
    let ranges = AtomicU64::new(0);
    let copied_again = AtomicU64::new(0);
    let rows = AtomicU64::new(0);
    let jobs = ctx.opts.jobs.max(1);
    stream::iter(tables.iter().map(Ok::<_, Error>))
        .try_for_each_concurrent(jobs, |&i| {
            let table = &catalog.tables[i];
            // The rows the copy selected (`--table-filter`, an extension's condition).
            let filter = units
                .iter()
                .find(|u| u.table == i)
                .and_then(|u| u.slice.predicate.as_deref());
            let (ranges, copied_again, rows) = (&ranges, &copied_again, &rows);
            async move {
                let what = format!("bring {} up to the new snapshot", table.name);
                // The target session of the attempt before, which a retry ends first: a lost
                // connection's backend may live on in its transaction, holding row locks.
                let previous = Mutex::new(None);
                let done = with_retries(ctx, &what, || {
                    refresh_table(ctx, snapshot, table, filter, replica_role, &previous)
                })
                .await?;
                ranges.fetch_add(done.ranges, Ordering::Relaxed);
                copied_again.fetch_add(done.copied_again, Ordering::Relaxed);
                rows.fetch_add(done.rows, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
    Ok(Refreshed {
        tables: tables.len(),
        ranges: ranges.into_inner(),
        copied_again: copied_again.into_inner(),
        rows: rows.into_inner(),
    })
}

/// One table: idempotent as a whole (each range it copies again is replaced in one
/// transaction, and a range that already matches is left alone), so a retry starts over.
async fn refresh_table(
    ctx: &Ctx,
    snapshot: &Snapshot,
    table: &Table,
    filter: Option<&str>,
    replica_role: bool,
    previous: &Mutex<Option<(i32, String)>>,
) -> Result<Refreshed> {
    let o = &ctx.opts;
    // The source's side of a range: its rows the copy selected.
    let selected = |p: &str| match filter {
        Some(f) => format!("({p}) AND ({f})"),
        None => p.to_owned(),
    };
    let (source, target) = tokio::try_join!(
        verify::compare_session(&o.source, Side::Source),
        verify::compare_session(&o.target, Side::Target)
    )?;
    snapshot::import(&source, snapshot.name()).await?;
    let mine = backend(&target).await?;
    let before = previous.lock().expect("not poisoned").replace(mine);
    if let Some(before) = before {
        end_backend(&target, &before).await?;
    }
    if replica_role {
        target
            .batch_execute("SET session_replication_role = replica")
            .await
            .map_err(|e| Error::sql(Side::Target, "set session_replication_role", e))?;
    }
    let format = if o.format == FormatChoice::Auto && table.binary_ok {
        Format::Binary
    } else {
        Format::Text
    };
    let t = &table.name;
    let mut out = Refreshed {
        tables: 1,
        ..Refreshed::default()
    };
    let Some(key) = verify::primary_key(&source, &target, t).await? else {
        // No key to cut ranges by: the whole table, by its count and order-independent hash.
        out.ranges = 1;
        let all = selected("true");
        let (s, d) = tokio::try_join!(
            verify::whole_digest(&source, t, &all, Side::Source),
            verify::whole_digest(&target, t, "true", Side::Target)
        )?;
        if s != d {
            out.copied_again = 1;
            let whole = [("true".to_owned(), all)];
            out.rows = replace(&source, &target, table, &whole, format).await?;
        }
        return Ok(out);
    };
    // First every range that differs, then all of them replaced at once: a unique or exclusion
    // constraint's value that moved from one range to another on the source would collide
    // with its old row if the ranges were replaced one by one.
    let mut stale: Vec<(Bound, Bound)> = Vec::new();
    let bounds = verify::boundaries(&source, t, &key, &selected("true"), RANGE_ROWS).await?;
    for (after, up_to) in verify::between(None, bounds, None) {
        out.ranges += 1;
        let p = verify::range_predicate(&key, after.as_ref(), up_to.as_ref());
        let theirs = selected(&p);
        let Some(rows) = differs(&source, &target, table, &key, &p, &theirs).await? else {
            continue;
        };
        if rows <= i64::try_from(2 * PART_ROWS).unwrap_or(i64::MAX) {
            stale.push((after, up_to));
            continue;
        }
        // Parts of the range, cut at every PART_ROWS-th key the source holds in it: together
        // they cover the range exactly, as the ranges cover the key space.
        let inner = verify::boundaries(&source, t, &key, &theirs, PART_ROWS).await?;
        for (a, u) in verify::between(after, inner, up_to) {
            let q = verify::range_predicate(&key, a.as_ref(), u.as_ref());
            let theirs = selected(&q);
            if differs(&source, &target, table, &key, &q, &theirs)
                .await?
                .is_some()
            {
                stale.push((a, u));
            }
        }
    }
    let stale = merge_adjacent(stale);
    out.copied_again = stale.len() as u64;
    if !stale.is_empty() {
        let ranges: Vec<(String, String)> = stale
            .iter()
            .map(|(a, u)| {
                let p = verify::range_predicate(&key, a.as_ref(), u.as_ref());
                let theirs = selected(&p);
                (p, theirs)
            })
            .collect();
        out.rows = replace(&source, &target, table, &ranges, format).await?;
    }
    Ok(out)
}

/// `ranges` (in key order, none overlapping) with each run of ranges that touch, where one
/// ends at the key the next starts after, joined into one range.
fn merge_adjacent(ranges: Vec<(Bound, Bound)>) -> Vec<(Bound, Bound)> {
    let mut merged: Vec<(Bound, Bound)> = Vec::with_capacity(ranges.len());
    for (after, up_to) in ranges {
        match merged.last_mut() {
            Some(last) if last.1.is_some() && last.1 == after => last.1 = up_to,
            _ => merged.push((after, up_to)),
        }
    }
    merged
}

/// Whether the target's rows of `table` that `predicate` selects differ from the source's that
/// `from_source` selects; when they do, the larger of the two row counts.
async fn differs(
    source: &Client,
    target: &Client,
    table: &Table,
    key: &verify::Key,
    predicate: &str,
    from_source: &str,
) -> Result<Option<i64>> {
    let t = &table.name;
    let (s, d) = tokio::try_join!(
        verify::range_digest(source, t, key, from_source, Side::Source),
        verify::range_digest(target, t, key, predicate, Side::Target)
    )?;
    Ok((s != d).then(|| s.0.max(d.0)))
}

/// Replace, in one target transaction, the target's rows of `table` that each range's first
/// predicate selects with the source's that its second selects (as of the snapshot `source`
/// holds): every range's rows are removed before any is copied, so that no row put back meets
/// a unique value that a removed row still held. Returns the rows copied.
async fn replace(
    source: &Client,
    target: &Client,
    table: &Table,
    ranges: &[(String, String)],
    format: Format,
) -> Result<u64> {
    let name = &table.name;
    let side = Side::Target;
    let run = async {
        target
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::sql(side, format!("begin replacing rows of {name}"), e))?;
        for (predicate, _) in ranges {
            target
                .batch_execute(&format!(
                    "DELETE FROM ONLY {} WHERE {predicate}",
                    name.quoted()
                ))
                .await
                .map_err(|e| Error::sql(side, format!("remove outdated rows of {name}"), e))?;
        }
        let mut rows = 0;
        for (_, from_source) in ranges {
            let (copied, _) = copy::pump(
                source,
                target,
                &copy::copy_out_where_sql(table, from_source, format),
                &copy::copy_in_sql(table, format, false),
                |_| {},
            )
            .await?;
            rows += copied;
        }
        target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| Error::sql(side, format!("commit the rows of {name}"), e))?;
        Ok(rows)
    };
    let done: Result<u64> = run.await;
    if done.is_err() {
        let _ = target.batch_execute("ROLLBACK").await;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Slice;

    fn unit(table: usize, done: bool) -> Unit {
        Unit {
            id: format!("t{table}"),
            table,
            slice: Slice::whole(),
            est_bytes: 0,
            done,
        }
    }

    #[test]
    fn a_table_is_finished_only_when_every_unit_of_it_is() {
        let units = vec![
            unit(0, true),
            unit(1, true),
            unit(1, false),
            unit(2, false),
            unit(3, true),
            unit(3, true),
        ];
        assert_eq!(finished_tables(&units), vec![0, 3]);
        assert!(finished_tables(&[]).is_empty());
    }

    #[test]
    fn touching_ranges_are_joined_and_the_others_kept() {
        let k = |v: &str| Some(vec![v.to_owned()]);
        assert!(merge_adjacent(vec![]).is_empty());
        assert_eq!(
            merge_adjacent(vec![
                (None, k("10")),
                (k("10"), k("20")),
                (k("30"), k("40"))
            ]),
            vec![(None, k("20")), (k("30"), k("40"))]
        );
        assert_eq!(
            merge_adjacent(vec![(k("30"), k("40")), (k("40"), None)]),
            vec![(k("30"), None)]
        );
        // An open end touches nothing: (None, None) is the whole key space already.
        assert_eq!(merge_adjacent(vec![(None, None)]), vec![(None, None)]);
    }

    #[test]
    fn ranges_cover_from_the_first_bound_to_the_last_without_a_gap() {
        use verify::between;
        let k = |v: &str| Some(vec![v.to_owned()]);
        assert_eq!(between(None, vec![], None), vec![(None, None)]);
        assert_eq!(
            between(k("10"), vec![vec!["20".into()], vec!["30".into()]], k("40")),
            vec![(k("10"), k("20")), (k("20"), k("30")), (k("30"), k("40"))]
        );
        assert_eq!(
            between(None, vec![vec!["5".into()]], None),
            vec![(None, k("5")), (k("5"), None)]
        );
    }
}

//! Planning the data phase: which tables are copied, how large tables split into ctid block
//! ranges, and the order of the work queue (largest first, so the longest unit starts early
//! and the pool finishes together).

use std::collections::HashMap;

use crate::catalog::Table;
use crate::copy::Slice;
use crate::error::{Error, Result};
use crate::filter::{Filter, QualName};
use crate::target::UnitRecord;

/// One unit of work: a table or a block range of it, copied in one target transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Stable id recorded in the target: `schema.table` or `schema.table#k`.
    pub id: String,
    /// Index into the catalog's tables.
    pub table: usize,
    /// What it copies.
    pub slice: Slice,
    /// Estimated heap + TOAST bytes.
    pub est_bytes: u64,
    /// Done by an earlier, interrupted run.
    pub done: bool,
}

/// Which tables are split into block ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitSize {
    /// The planner decides: a table is split only when that shortens the run (see [`plan`]).
    Auto,
    /// No table is split.
    Never,
    /// Tables larger than this many heap + TOAST bytes are split into ranges of about this
    /// size; tables over 64 MiB whose copy and index builds are the run's longest path are also
    /// split `jobs` ways.
    LargerThan(u64),
}

/// How to split tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPolicy {
    /// Which tables are split.
    pub size: SplitSize,
    /// At most this many parts per table.
    pub max_parts: u64,
    /// Whether the source can scan ctid ranges efficiently (TID Range Scan, PostgreSQL ≥ 14).
    /// Without it every range would read the whole table.
    pub tid_range_scan: bool,
}

/// How many COPY streams into one table the two servers run side by side faster than one:
/// the most parts an automatic split makes.
///
/// One stream keeps about one core of the target busy (parsing and inserting rows, writing
/// WAL) and half a core of the source (reading and sending). When both servers run on this
/// machine they share its `cores`, so a second stream only pays from four cores up; measured
/// on two cores, two streams of one 3.4 GB table ran no faster than one and lost COPY FREEZE
/// (see docs/engine.md). A server elsewhere is assumed to have the cores for `jobs` streams.
pub fn stream_capacity(source_here: bool, target_here: bool, cores: u64, jobs: u64) -> u64 {
    let jobs = jobs.max(1);
    match (source_here, target_here) {
        (true, true) => (cores / 2).clamp(1, jobs),
        (true, false) | (false, true) => cores.clamp(1, jobs),
        (false, false) => jobs,
    }
}

/// Copy plus index-build cost of a table, in heap-byte equivalents: the length of its path
/// through the run.
pub fn path_cost(t: &Table) -> u64 {
    t.bytes + t.index_cost
}

/// Tables below this size are never split for balance: the saving would be lost in overhead.
const MIN_BALANCE_SPLIT: u64 = 64 << 20;

fn predicate(table: &Table, filter: &Filter) -> Option<String> {
    match (
        filter.row_filters.get(&table.name),
        &table.extension_condition,
    ) {
        (Some(a), Some(b)) => Some(format!("({a}) AND ({b})")),
        (Some(a), None) => Some(a.clone()),
        (None, Some(b)) => Some(b.clone()),
        (None, None) => None,
    }
}

/// Plan units for the tables whose rows are copied (`copy[i]` says whether table `i` is), for a
/// pool of `jobs` workers whose servers load `streams` ranges of one table side by side faster
/// than one ([`stream_capacity`]).
///
/// A split costs the table its `COPY FREEZE` (only a unit that empties the table in its own
/// transaction may freeze), so its rows are written unfrozen and the first scan after the copy
/// (the index builds, then the application's reads and autovacuum) rewrites every page to set
/// hint bits: measured, a primary key build took 1.7× as long on the unfrozen table. So under
/// [`SplitSize::Auto`] a table is split only when its copy and index builds are longer than its
/// share of the run (the run would otherwise wait for it alone), it holds at least 64 MiB, and
/// the servers can load more than one range at once; then it is split into as many ranges as
/// they can load side by side. An explicit size splits as asked.
pub fn plan(
    tables: &[Table],
    copy: &[bool],
    filter: &Filter,
    policy: SplitPolicy,
    jobs: u64,
    streams: u64,
) -> Vec<Unit> {
    let mut units = Vec::new();
    let total: u64 = tables
        .iter()
        .zip(copy)
        .filter(|(_, c)| **c)
        .map(|(t, _)| path_cost(t))
        .sum();
    let share = total / jobs.max(1);
    for (i, t) in tables.iter().enumerate() {
        if !copy[i] {
            continue;
        }
        let pred = predicate(t, filter);
        // The longest path decides when the run ends: share its copy among the workers.
        let longest = policy.tid_range_scan
            && jobs > 1
            && t.bytes >= MIN_BALANCE_SPLIT
            && path_cost(t) > share;
        let parts = match policy.size {
            SplitSize::Never | SplitSize::LargerThan(0) => 1,
            SplitSize::Auto if longest => jobs.min(streams.max(1)),
            SplitSize::Auto => 1,
            SplitSize::LargerThan(n) => {
                let by_size = if policy.tid_range_scan && t.bytes > n {
                    t.bytes.div_ceil(n.max(1))
                } else {
                    1
                };
                if longest {
                    by_size.max(jobs)
                } else {
                    by_size
                }
            }
        };
        let parts = parts.min(policy.max_parts.max(1)).min(t.pages.max(1));
        if parts <= 1 {
            units.push(Unit {
                id: t.name.to_string(),
                table: i,
                slice: Slice {
                    from_block: None,
                    to_block: None,
                    predicate: pred,
                },
                est_bytes: t.bytes,
                done: false,
            });
            continue;
        }
        let step = t.pages.div_ceil(parts);
        for k in 0..parts {
            units.push(Unit {
                id: format!("{}#{k}", t.name),
                table: i,
                slice: Slice {
                    from_block: (k > 0).then_some(k * step),
                    // The last range is open-ended: rows may sit in blocks past the size read
                    // when planning.
                    to_block: (k + 1 < parts).then_some((k + 1) * step),
                    predicate: pred.clone(),
                },
                est_bytes: t.bytes / parts,
                done: false,
            });
        }
    }
    order(&mut units, tables);
    units
}

/// Longest path first (copy plus index builds of the unit's table), a table's units together;
/// ties by id so runs are repeatable.
pub fn order(units: &mut [Unit], tables: &[Table]) {
    units.sort_by(|a, b| {
        path_cost(&tables[b.table])
            .cmp(&path_cost(&tables[a.table]))
            .then_with(|| b.est_bytes.cmp(&a.est_bytes))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// The records of a plan, for the target's bookkeeping.
pub fn records(units: &[Unit], tables: &[Table]) -> Vec<UnitRecord> {
    units
        .iter()
        .map(|u| UnitRecord {
            id: u.id.clone(),
            schema: tables[u.table].name.schema.clone(),
            table: tables[u.table].name.name.clone(),
            from_block: u.slice.from_block.map(|b| b as i64),
            to_block: u.slice.to_block.map(|b| b as i64),
            done: false,
        })
        .collect()
}

/// An interrupted run's records with each split table whose ranges did not all finish planned
/// again as one whole-table unit: ctid ranges belong to one snapshot (rows updated since move
/// to other blocks, so they could be copied twice, or not at all, by ranges of two runs), and
/// the whole-table unit empties the table first. Returns the records and the new whole-table
/// ones, which replace the table's range records in the bookkeeping.
pub fn restart_unfinished_splits(records: Vec<UnitRecord>) -> (Vec<UnitRecord>, Vec<UnitRecord>) {
    // Per split table: (some range done, some range not).
    let mut split: Vec<((String, String), (bool, bool))> = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.from_block.is_some() || r.to_block.is_some())
    {
        let key = (r.schema.clone(), r.table.clone());
        let at = match split.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                split.push((key, (false, false)));
                split.len() - 1
            }
        };
        let seen = &mut split[at].1;
        if r.done {
            seen.0 = true;
        } else {
            seen.1 = true;
        }
    }
    // A table none of whose ranges committed is copied by all of them under the new snapshot,
    // which is consistent; only a mix of the two snapshots is not.
    let unfinished: Vec<(String, String)> = split
        .into_iter()
        .filter(|(_, (some_done, some_left))| *some_done && *some_left)
        .map(|(k, _)| k)
        .collect();
    let mut kept: Vec<UnitRecord> = records
        .into_iter()
        .filter(|r| !unfinished.contains(&(r.schema.clone(), r.table.clone())))
        .collect();
    let redo: Vec<UnitRecord> = unfinished
        .into_iter()
        .map(|(schema, table)| UnitRecord {
            id: QualName::new(schema.clone(), table.clone()).to_string(),
            schema,
            table,
            from_block: None,
            to_block: None,
            done: false,
        })
        .collect();
    kept.extend(redo.iter().cloned());
    (kept, redo)
}

/// Rebuild an interrupted run's plan from its records, against the source as it is now.
///
/// # Errors
/// [`Error::Preflight`] when a recorded table no longer exists in the source.
pub fn from_records(
    records: &[UnitRecord],
    tables: &[Table],
    filter: &Filter,
) -> Result<Vec<Unit>> {
    let by_name: HashMap<&QualName, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (&t.name, i))
        .collect();
    let mut units = Vec::with_capacity(records.len());
    for r in records {
        let name = QualName::new(r.schema.clone(), r.table.clone());
        let &i = by_name.get(&name).ok_or_else(|| {
            Error::Preflight(format!(
                "cannot resume: table {name} of the interrupted run no longer exists in the \
                 source; start over with --drop-existing"
            ))
        })?;
        let t = &tables[i];
        let ranged = r.from_block.is_some() || r.to_block.is_some();
        units.push(Unit {
            id: r.id.clone(),
            table: i,
            slice: Slice {
                from_block: r.from_block.map(|b| b as u64),
                to_block: r.to_block.map(|b| b as u64),
                predicate: predicate(t, filter),
            },
            est_bytes: if ranged {
                let from = r.from_block.unwrap_or(0) as u64;
                let to = r.to_block.map_or(t.pages.max(from), |b| b as u64);
                t.bytes.saturating_mul(to.saturating_sub(from)) / t.pages.max(1)
            } else {
                t.bytes
            },
            done: r.done,
        });
    }
    order(&mut units, tables);
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, pages: u64, bytes: u64) -> Table {
        Table {
            oid: 0,
            name: QualName::new("public", name),
            columns: vec!["a".into()],
            binary_ok: true,
            pages,
            bytes,
            est_rows: None,
            has_children: false,
            extension_condition: None,
            index_cost: 0,
        }
    }

    const SPLIT: SplitPolicy = SplitPolicy {
        size: SplitSize::LargerThan(1000),
        max_parts: 8,
        tid_range_scan: true,
    };

    #[test]
    fn large_tables_split_into_contiguous_ranges_covering_every_block() {
        let tables = [table("big", 100, 3500)];
        let units = plan(&tables, &[true], &Filter::default(), SPLIT, 1, 1);
        assert_eq!(units.len(), 4);
        let mut slices: Vec<_> = units
            .iter()
            .map(|u| (u.slice.from_block, u.slice.to_block))
            .collect();
        slices.sort();
        assert_eq!(
            slices,
            [
                (None, Some(25)),
                (Some(25), Some(50)),
                (Some(50), Some(75)),
                (Some(75), None)
            ]
        );
        assert!(units.iter().all(|u| u.id.starts_with("public.big#")));
    }

    #[test]
    fn no_split_without_tid_range_scan_or_below_threshold() {
        let tables = [table("big", 100, 3500), table("small", 1, 900)];
        let old = SplitPolicy {
            tid_range_scan: false,
            ..SPLIT
        };
        assert_eq!(
            plan(&tables, &[true, true], &Filter::default(), old, 1, 1).len(),
            2
        );
        let never = SplitPolicy {
            size: SplitSize::Never,
            ..SPLIT
        };
        assert_eq!(
            plan(&tables, &[true, true], &Filter::default(), never, 1, 1).len(),
            2
        );
        let parts_capped = SplitPolicy {
            max_parts: 2,
            ..SPLIT
        };
        assert_eq!(
            plan(
                &tables[..1],
                &[true],
                &Filter::default(),
                parts_capped,
                1,
                1
            )
            .len(),
            2
        );
    }

    #[test]
    fn queue_is_largest_first_and_skips_tables_not_copied() {
        let tables = [
            table("a", 1, 10),
            table("b", 1, 30),
            table("c", 1, 20),
            table("d", 1, 99),
        ];
        let units = plan(
            &tables,
            &[true, true, true, false],
            &Filter::default(),
            SPLIT,
            1,
            1,
        );
        let ids: Vec<_> = units.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["public.b", "public.c", "public.a"]);
    }

    #[test]
    fn the_longest_path_goes_first_and_is_shared_among_workers() {
        // `slow` is smaller but its indexes (a GIN, say) make its path the longest.
        let mut slow = table("slow", 10_000, 300 << 20);
        slow.index_cost = 600 << 20;
        let tables = [table("big", 20_000, 450 << 20), slow];
        let policy = SplitPolicy {
            size: SplitSize::LargerThan(1 << 30),
            max_parts: 64,
            tid_range_scan: true,
        };
        let units = plan(&tables, &[true, true], &Filter::default(), policy, 2, 2);
        let ids: Vec<_> = units.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["public.slow#0", "public.slow#1", "public.big"]);
        assert_eq!(
            plan(&tables, &[true, true], &Filter::default(), policy, 1, 1).len(),
            2
        );
    }

    #[test]
    fn automatic_splits_follow_the_longest_path_and_the_servers_capacity() {
        // One table holds nearly all the data (pgbench's accounts): its path is the run's.
        let tables = [
            table("accounts", 400_000, 3 << 30),
            table("tellers", 10, 80_000),
        ];
        let auto = SplitPolicy {
            size: SplitSize::Auto,
            max_parts: 64,
            tid_range_scan: true,
        };
        let parts = |jobs, streams| {
            plan(
                &tables,
                &[true, true],
                &Filter::default(),
                auto,
                jobs,
                streams,
            )
            .iter()
            .filter(|u| u.table == 0)
            .count()
        };
        // Both servers on a 2-core machine: one stream at a time, so the table stays whole and
        // keeps COPY FREEZE; no size alone splits it.
        assert_eq!(parts(2, stream_capacity(true, true, 2, 2)), 1);
        // Eight cores shared by both servers load four ranges at once.
        assert_eq!(parts(8, stream_capacity(true, true, 8, 8)), 4);
        // Servers elsewhere: one range per worker.
        assert_eq!(parts(4, stream_capacity(false, false, 2, 4)), 4);
        assert_eq!(parts(1, 1), 1);
        // Two equal tables each take their share: neither is split.
        let even = [table("a", 200_000, 2 << 30), table("b", 200_000, 2 << 30)];
        assert_eq!(
            plan(&even, &[true, true], &Filter::default(), auto, 2, 2).len(),
            2
        );
        // Old sources (no TID Range Scan) are never split.
        let old = SplitPolicy {
            tid_range_scan: false,
            ..auto
        };
        assert_eq!(
            plan(&tables, &[true, true], &Filter::default(), old, 8, 8).len(),
            2
        );
    }

    #[test]
    fn stream_capacity_counts_the_cores_the_servers_share() {
        assert_eq!(stream_capacity(true, true, 2, 2), 1);
        assert_eq!(stream_capacity(true, true, 3, 8), 1);
        assert_eq!(stream_capacity(true, true, 16, 8), 8);
        assert_eq!(stream_capacity(true, false, 2, 8), 2);
        assert_eq!(stream_capacity(false, true, 1, 8), 1);
        assert_eq!(stream_capacity(false, false, 2, 8), 8);
        assert_eq!(stream_capacity(false, false, 2, 0), 1);
    }

    #[test]
    fn row_filters_apply_to_every_range() {
        let tables = [table("big", 100, 3500)];
        let filter = Filter::from_args(&[], &[], &[], &["public.big:a > 1".into()]).expect("valid");
        let units = plan(&tables, &[true], &filter, SPLIT, 1, 1);
        assert!(units
            .iter()
            .all(|u| u.slice.predicate.as_deref() == Some("a > 1")));
    }

    #[test]
    fn a_split_table_left_unfinished_is_planned_again_whole() {
        let tables = [
            table("big", 100, 3500),
            table("small", 1, 10),
            table("done", 100, 3500),
        ];
        let units = plan(
            &tables,
            &[true, true, true],
            &Filter::default(),
            SPLIT,
            1,
            1,
        );
        let mut recs = records(&units, &tables);
        // Some of big's ranges finished, all of done's, and small.
        for r in &mut recs {
            r.done = r.table == "done" || r.table == "small" || r.id == "public.big#0";
        }
        let (recs, redo) = restart_unfinished_splits(recs);
        assert_eq!(redo.len(), 1);
        assert_eq!(redo[0].id, "public.big");
        assert_eq!(
            (redo[0].from_block, redo[0].to_block, redo[0].done),
            (None, None, false)
        );
        let big: Vec<_> = recs.iter().filter(|r| r.table == "big").collect();
        assert_eq!(big.len(), 1, "one whole-table unit replaces the ranges");
        assert_eq!(recs.iter().filter(|r| r.table == "done").count(), 4);
        let back = from_records(&recs, &tables, &Filter::default()).expect("resumable");
        let big_unit = back
            .iter()
            .find(|u| u.id == "public.big")
            .expect("whole unit");
        assert!(big_unit.slice.from_block.is_none() && big_unit.slice.to_block.is_none());
        assert!(!big_unit.done);
        // Nothing to redo when every range finished or none did.
        let (kept, none) = restart_unfinished_splits(records(&units, &tables));
        assert!(none.is_empty());
        assert_eq!(kept.len(), units.len());
    }

    #[test]
    fn records_round_trip_into_the_same_plan() {
        let tables = [table("big", 100, 3500), table("small", 1, 10)];
        let units = plan(&tables, &[true, true], &Filter::default(), SPLIT, 1, 1);
        let mut recs = records(&units, &tables);
        recs[1].done = true;
        let back = from_records(&recs, &tables, &Filter::default()).expect("resumable");
        assert_eq!(back.len(), units.len());
        assert_eq!(back.iter().filter(|u| u.done).count(), 1);
        let missing = from_records(&recs, &tables[1..], &Filter::default()).unwrap_err();
        assert!(
            missing.to_string().contains("no longer exists"),
            "{missing}"
        );
    }
}

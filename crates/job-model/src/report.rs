//! What `verify` and `validate` report, and what an `init` job left running: one typed
//! definition, printed by `--json` locally, recorded in a remote job's `result`, and read back
//! by the CLI. Every later field has a
//! default, so a record written by an older release still decodes; `version` says which shape
//! wrote it (records without one are version 1).

use serde::{Deserialize, Serialize};

/// The shape of the reports this release writes.
pub const REPORT_VERSION: u32 = 1;

fn version_one() -> u32 {
    1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a `verify` or `validate` job found, or what an `init` job left running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobResult {
    /// A `verify` report.
    Verify(VerifyResult),
    /// A `validate` report.
    Validate(ValidateResult),
    /// An `init` job's outcome.
    Init(InitResult),
}

/// What an `init` job made that outlives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResult {
    /// The shape of this report.
    #[serde(default = "version_one")]
    pub version: u32,
    /// Whether replication runs after the copy (false: copy only, or replication was not
    /// possible and the warnings say why).
    pub replicating: bool,
    /// The replication it set up, when it did: what `status`, `verify`, `cutover` and
    /// `sync --stop` act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationResult>,
}

/// The objects of one replication, on the two servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationResult {
    /// The logical replication slot on the source.
    pub slot: String,
    /// The publication on the source.
    pub publication: String,
    /// The subscription on the target.
    pub subscription: String,
    /// Where replication starts: the copy's snapshot saw everything before this LSN.
    pub consistent_point: String,
    /// Tables in the publication.
    pub published_tables: u64,
}

/// `verify`'s report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// The shape of this report.
    #[serde(default = "version_one")]
    pub version: u32,
    /// Whether every table agrees.
    pub equal: bool,
    /// While replication ran: the source LSN the target had passed when the comparison began.
    pub compared_at_lsn: Option<String>,
    /// The tables, in name order (in a job record too large to hold them all: the differing
    /// ones first kept, see the `*_not_listed` counts).
    pub tables: Vec<TableReport>,
    /// Equal tables left out to fit a job record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub equal_tables_not_listed: u64,
    /// Differing tables left out to fit a job record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub differing_tables_not_listed: u64,
}

/// How a table was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareMethod {
    /// By primary-key ranges: counts and ordered checksums; differences are located.
    KeyRanges,
    /// Whole table: count and an order-independent hash sum (no primary key).
    WholeTable,
}

/// One table of a verify report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    /// `schema.table`, quoted where needed.
    pub table: String,
    /// How it was compared.
    pub method: CompareMethod,
    /// Whether source and target agree on it.
    pub equal: bool,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// Ranges compared.
    pub ranges: u64,
    /// The table is missing on the target.
    #[serde(default)]
    pub missing_on_target: bool,
    /// Ranges that differ.
    #[serde(default)]
    pub mismatches: Vec<RangeReport>,
    /// Differing ranges left out to fit a job record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mismatches_not_listed: u64,
}

/// A key range whose rows differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeReport {
    /// The key columns.
    pub key: Vec<String>,
    /// Lower bound, exclusive (absent: from the first row).
    pub after: Option<Vec<String>>,
    /// Upper bound, inclusive (absent: to the last row).
    pub up_to: Option<Vec<String>>,
    /// Rows in the range on the source.
    pub source_rows: i64,
    /// Rows in the range on the target.
    pub target_rows: i64,
    /// The range in words, as the CLI prints it.
    pub description: String,
}

impl VerifyResult {
    /// Tables the report covers, listed or not.
    pub fn total_tables(&self) -> u64 {
        self.tables.len() as u64 + self.equal_tables_not_listed + self.differing_tables_not_listed
    }

    /// Tables that differ, listed or not.
    pub fn differing_tables(&self) -> u64 {
        self.tables.iter().filter(|t| !t.equal).count() as u64 + self.differing_tables_not_listed
    }

    /// The report within `limit` bytes of JSON, for a job record (a DynamoDB item holds at
    /// most 400 KB): first the equal tables are left out (counted) and each differing table
    /// keeps its first 100 ranges; then, if need be, no ranges; then only as many differing
    /// tables as fit (the rest counted).
    #[must_use]
    pub fn fit(mut self, limit: usize) -> Self {
        let size = |r: &Self| serde_json::to_string(r).map_or(usize::MAX, |s| s.len());
        if size(&self) <= limit {
            return self;
        }
        let before = self.tables.len();
        self.tables.retain(|t| !t.equal);
        self.equal_tables_not_listed += (before - self.tables.len()) as u64;
        for t in &mut self.tables {
            let extra = t.mismatches.len().saturating_sub(100);
            t.mismatches.truncate(100);
            t.mismatches_not_listed += extra as u64;
        }
        if size(&self) > limit {
            for t in &mut self.tables {
                t.mismatches_not_listed += t.mismatches.len() as u64;
                t.mismatches.clear();
            }
        }
        while size(&self) > limit && !self.tables.is_empty() {
            let keep = self.tables.len() / 2;
            self.differing_tables_not_listed += (self.tables.len() - keep) as u64;
            self.tables.truncate(keep);
        }
        self
    }
}

/// `validate`'s report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateResult {
    /// The shape of this report.
    #[serde(default = "version_one")]
    pub version: u32,
    /// False when any check failed.
    pub ok: bool,
    /// Every check, in the order they ran.
    pub checks: Vec<CheckReport>,
}

/// One check of a validate report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Its name (`wal_level`, `replication_role` …).
    pub check: String,
    /// `pass`, `warn` or `fail`.
    pub result: String,
    /// What was found.
    pub detail: String,
    /// What to do (empty when nothing).
    #[serde(default)]
    pub fix: String,
}

impl ValidateResult {
    /// The names of the checks that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.result == "fail")
            .map(|c| c.check.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verify report as the previous release recorded it (no `version`), byte for byte.
    const OLD_VERIFY: &str = r#"{"compared_at_lsn":null,"equal":false,"tables":[{"equal":true,"method":"key_ranges","mismatches":[],"missing_on_target":false,"ranges":1,"source_rows":200,"table":"public.actor","target_rows":200},{"equal":false,"method":"key_ranges","mismatches":[{"after":["5"],"description":"5 < (actor_id) <= 10: 5 rows on the source, 5 on the target, contents differ","key":["actor_id"],"source_rows":5,"target_rows":5,"up_to":["10"]}],"missing_on_target":false,"ranges":3,"source_rows":16,"table":"public.film_actor","target_rows":16},{"equal":false,"method":"whole_table","mismatches":[],"missing_on_target":true,"ranges":0,"source_rows":3,"table":"public.log","target_rows":0}],"equal_tables_not_listed":4}"#;
    /// A validate report as the previous release recorded it.
    const OLD_VALIDATE: &str = r#"{"checks":[{"check":"source_reachable","detail":"PostgreSQL 15.14","fix":"","result":"pass"},{"check":"wal_level","detail":"wal_level is replica","fix":"set wal_level = logical and restart","result":"fail"}],"ok":false}"#;

    #[test]
    fn records_written_by_the_previous_release_decode() {
        let v: JobResult = serde_json::from_str(OLD_VERIFY).expect("old verify");
        let JobResult::Verify(v) = v else {
            panic!("read as validate: {v:?}")
        };
        assert_eq!(v.version, 1);
        assert!(!v.equal);
        assert_eq!((v.total_tables(), v.differing_tables()), (7, 2));
        assert_eq!(v.tables[1].mismatches[0].after, Some(vec!["5".to_owned()]));
        assert!(v.tables[2].missing_on_target);
        assert_eq!(v.tables[2].method, CompareMethod::WholeTable);
        let c: JobResult = serde_json::from_str(OLD_VALIDATE).expect("old validate");
        let JobResult::Validate(c) = c else {
            panic!("read as verify: {c:?}")
        };
        assert_eq!(c.failed(), vec!["wal_level"]);
        // And what this release writes reads back the same.
        let again: JobResult =
            serde_json::from_str(&serde_json::to_string(&JobResult::Verify(v.clone())).expect("w"))
                .expect("r");
        assert_eq!(again, JobResult::Verify(v));
    }

    fn report(tables: usize, differing: usize, ranges: usize) -> VerifyResult {
        VerifyResult {
            version: REPORT_VERSION,
            equal: differing == 0,
            compared_at_lsn: None,
            tables: (0..tables)
                .map(|i| TableReport {
                    table: format!("public.table_with_a_long_name_{i:05}"),
                    method: CompareMethod::KeyRanges,
                    equal: i >= differing,
                    source_rows: 1000,
                    target_rows: 1000,
                    ranges: 10,
                    missing_on_target: false,
                    mismatches: if i < differing {
                        (0..ranges)
                            .map(|r| RangeReport {
                                key: vec!["id".into()],
                                after: Some(vec![r.to_string()]),
                                up_to: Some(vec![(r + 1).to_string()]),
                                source_rows: 1,
                                target_rows: 1,
                                description: format!("{r} < (id) <= {}: contents differ", r + 1),
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    mismatches_not_listed: 0,
                })
                .collect(),
            equal_tables_not_listed: 0,
            differing_tables_not_listed: 0,
        }
    }

    #[test]
    fn a_large_report_fits_its_record_and_counts_what_it_leaves_out() {
        let limit = 256 * 1024;
        let small = report(10, 1, 3);
        assert_eq!(
            small.clone().fit(limit),
            small,
            "small reports are kept whole"
        );
        for (tables, differing, ranges) in [(500, 2, 5000), (5000, 2000, 1), (50_000, 20_000, 0)] {
            let whole = serde_json::to_string(&report(tables, differing, ranges)).expect("json");
            assert!(whole.len() > limit, "the case must need trimming");
            let r = report(tables, differing, ranges).fit(limit);
            assert!(serde_json::to_string(&r).expect("json").len() <= limit);
            assert_eq!(r.total_tables(), tables as u64, "{tables}");
            assert_eq!(r.differing_tables(), differing as u64, "{tables}");
            assert!(r.tables.iter().all(|t| !t.equal));
            let listed: u64 = r
                .tables
                .iter()
                .map(|t| t.mismatches.len() as u64 + t.mismatches_not_listed)
                .sum();
            let lost = r.differing_tables_not_listed * ranges as u64;
            assert_eq!(listed + lost, (differing * ranges) as u64);
        }
    }
}

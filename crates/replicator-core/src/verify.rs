//! `verify`: prove that the target holds the source's rows, by counts and checksums computed
//! inside both databases.
//!
//! A table with a primary key is cut into ranges of its key (every `chunk_rows` rows, the
//! boundaries read once from the source's index); for each range both servers return the row
//! count and an MD5 over the rows' text in key order, so memory stays bounded by one range and
//! any column type works (rows are compared by their text form, not by ordering the values). A
//! table without a primary key is compared as a whole by its row count and an order-independent
//! sum of row hashes: a weaker check (it cannot tell which rows differ, and two changes could in
//! principle cancel out), and the report says so.
//!
//! While replication runs, both sides are read after the target has confirmed everything the
//! source had written when verify started; a range that differs is read again after the target
//! has caught up once more (up to three times), so that rows changing under a live source are
//! not reported as differences.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio_postgres::Client;

use crate::catalog;
use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::{Error, Result, Side};
use crate::filter::{Filter, QualName};
use crate::sql::{ident, literal};
use crate::sync::{self, SyncNames};

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The database copied from.
    pub source: ConnUrl,
    /// The database copied into.
    pub target: ConnUrl,
    /// Which tables (the copy's filters).
    pub filter: Filter,
    /// Tables checked in parallel (each with one connection to each side).
    pub jobs: usize,
    /// Rows per compared range.
    pub chunk_rows: u64,
    /// How long to wait for replication to catch up before comparing.
    pub catch_up_timeout: Duration,
}

impl VerifyOptions {
    /// Defaults: 4 tables at a time, ranges of 100,000 rows, two minutes for replication.
    pub fn new(source: ConnUrl, target: ConnUrl) -> Self {
        Self {
            source,
            target,
            filter: Filter::default(),
            jobs: 4,
            chunk_rows: 100_000,
            catch_up_timeout: Duration::from_secs(120),
        }
    }
}

/// How a table was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// By primary-key ranges: counts and ordered checksums; differences are located.
    KeyRanges,
    /// Whole table: count and an order-independent hash sum (no primary key).
    WholeTable,
}

/// A range whose rows differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The key columns.
    pub key: Vec<String>,
    /// Lower bound, exclusive (`None`: from the first row).
    pub after: Option<Vec<String>>,
    /// Upper bound, inclusive (`None`: to the last row).
    pub up_to: Option<Vec<String>>,
    /// Rows in the range on the source.
    pub source_rows: i64,
    /// Rows in the range on the target.
    pub target_rows: i64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.key.join(", ");
        let tuple = |v: &Vec<String>| {
            if v.len() == 1 {
                v[0].clone()
            } else {
                format!("({})", v.join(", "))
            }
        };
        let range = match (&self.after, &self.up_to) {
            (None, None) => format!("all rows by ({key})"),
            (None, Some(u)) => format!("({key}) <= {}", tuple(u)),
            (Some(a), None) => format!("({key}) > {}", tuple(a)),
            (Some(a), Some(u)) => format!("{} < ({key}) <= {}", tuple(a), tuple(u)),
        };
        write!(
            f,
            "{range}: {} rows on the source, {} on the target{}",
            self.source_rows,
            self.target_rows,
            if self.source_rows == self.target_rows {
                ", contents differ"
            } else {
                ""
            }
        )
    }
}

/// One table's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableResult {
    /// The table.
    pub table: QualName,
    /// How it was compared.
    pub method: Method,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// Ranges compared.
    pub ranges: usize,
    /// Ranges that differ (for [`Method::WholeTable`], one covering the table).
    pub mismatches: Vec<Mismatch>,
    /// The table is missing on the target.
    pub missing_on_target: bool,
}

impl TableResult {
    /// Whether source and target agree on this table.
    pub fn equal(&self) -> bool {
        self.mismatches.is_empty() && !self.missing_on_target
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Every table, in name order.
    pub tables: Vec<TableResult>,
    /// While replication ran: the source LSN the target had passed when the comparison began.
    pub compared_at_lsn: Option<String>,
}

impl VerifyReport {
    /// Whether every table agrees.
    pub fn equal(&self) -> bool {
        self.tables.iter().all(TableResult::equal)
    }

    /// The report as `verify --json` prints it and a remote `verify` job records it.
    pub fn to_result(&self) -> job_model::report::VerifyResult {
        use job_model::report::{CompareMethod, RangeReport, TableReport, VerifyResult};
        VerifyResult {
            version: job_model::report::REPORT_VERSION,
            equal: self.equal(),
            compared_at_lsn: self.compared_at_lsn.clone(),
            tables: self
                .tables
                .iter()
                .map(|t| TableReport {
                    table: t.table.to_string(),
                    method: match t.method {
                        Method::KeyRanges => CompareMethod::KeyRanges,
                        Method::WholeTable => CompareMethod::WholeTable,
                    },
                    equal: t.equal(),
                    source_rows: t.source_rows,
                    target_rows: t.target_rows,
                    ranges: t.ranges as u64,
                    missing_on_target: t.missing_on_target,
                    mismatches: t
                        .mismatches
                        .iter()
                        .map(|m| RangeReport {
                            key: m.key.clone(),
                            after: m.after.clone(),
                            up_to: m.up_to.clone(),
                            source_rows: m.source_rows,
                            target_rows: m.target_rows,
                            description: m.to_string(),
                        })
                        .collect(),
                    mismatches_not_listed: 0,
                })
                .collect(),
            equal_tables_not_listed: 0,
            differing_tables_not_listed: 0,
        }
    }
}

/// One end of a key range: the key's values as text, or open.
pub(crate) type Bound = Option<Vec<String>>;

pub(crate) struct Key {
    pub(crate) columns: Vec<String>,
    types: Vec<String>,
    /// Per column, how ranges order and compare it: the column, or the column `COLLATE "C"`
    /// when the two servers would sort it differently (another locale, or another glibc or
    /// ICU version: the usual case when a major-version upgrade moves to a newer system).
    /// Both sides must cut and order ranges alike; where they already do, the column is left
    /// as it is, so that the primary key's index serves the ranges.
    exprs: Vec<String>,
}

/// One primary key column on one server.
struct KeyColumn {
    name: String,
    ty: String,
    /// The type takes a collation.
    collatable: bool,
    /// How the server sorts the text in it: `bytes`, or provider, locale and library version
    /// of its collation; empty when it holds no text. A range, multirange or composite (or an
    /// array of one) compares the text inside it by the database's default collation.
    ordering: String,
    /// A range, multirange or composite type, or an array of one: `COLLATE` cannot reach the
    /// text inside it.
    nested: bool,
}

/// How a collation given as provider `p` and locale `l` sorts, with `v` its library version.
const ORDERING: &str = "CASE WHEN (p = 'c' AND l IN ('C', 'POSIX')) OR p = 'b' THEN 'bytes' \
                         ELSE p || ':' || l || ':' || coalesce(v, '?') END";

/// The columns of `t` on `side` that range comparisons order by: its primary key's (without
/// the `INCLUDE` columns, which are not part of the key) with `names` None, else the columns
/// `names` names, in that order. The target's are read by name from the table itself, not
/// from its primary key: during the copy (a resume compares finished tables) the target's
/// key is not built yet, and its columns still tell how the target sorts them.
async fn key_columns(
    c: &Client,
    t: &QualName,
    side: Side,
    names: Option<&[String]>,
) -> Result<Vec<KeyColumn>> {
    let columns = match names {
        None => {
            "pg_index i \
             JOIN pg_class r ON r.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = r.relnamespace \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum = k.attnum \
             WHERE i.indisprimary AND k.ord <= i.indnkeyatts AND n.nspname = $1 AND r.relname = $2"
        }
        Some(_) => {
            "pg_class r \
             JOIN pg_namespace n ON n.oid = r.relnamespace \
             CROSS JOIN LATERAL unnest($3::text[]) WITH ORDINALITY AS k(attname, ord) \
             JOIN pg_attribute a ON a.attrelid = r.oid AND a.attname = k.attname \
                                 AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE n.nspname = $1 AND r.relname = $2"
        }
    };
    let sql = format!(
        "WITH db AS ({database}), \
         dflt AS (SELECT ({ORDERING}) AS ordering \
                  FROM (SELECT db.p, db.l, {version} AS v FROM db) x) \
         SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attcollation <> 0, \
                CASE WHEN a.attcollation = 100 OR nested THEN dflt.ordering \
                     WHEN a.attcollation = 0 THEN '' \
                     ELSE (SELECT ({ORDERING}) FROM (SELECT co.collprovider::text AS p, \
                             coalesce(CASE WHEN co.collprovider = 'c' THEN co.collcollate END, \
                                      to_jsonb(co) ->> 'colliculocale', to_jsonb(co) ->> 'colllocale', \
                                      co.collcollate, '') AS l, \
                             pg_collation_actual_version(co.oid) AS v \
                           FROM pg_collation co WHERE co.oid = a.attcollation) x) END, \
                nested \
         FROM (SELECT a.attname, a.atttypid, a.atttypmod, a.attcollation, k.ord FROM {columns}) a \
         JOIN pg_type ty ON ty.oid = a.atttypid \
         LEFT JOIN pg_type el ON el.oid = ty.typelem AND ty.typelem <> 0 \
         CROSS JOIN LATERAL (SELECT ty.typtype IN ('r', 'm', 'c') \
                                    OR coalesce(el.typtype IN ('r', 'm', 'c'), false) AS nested) ne \
         CROSS JOIN dflt \
         ORDER BY a.ord",
        database = catalog::DATABASE_COLLATION,
        version = catalog::collation_library_version("db.p"),
    );
    let rows = match names {
        None => c.query(&sql, &[&t.schema, &t.name]).await,
        Some(n) => c.query(&sql, &[&t.schema, &t.name, &n]).await,
    }
    .map_err(|e| Error::sql(side, format!("read the key columns of {t}"), e))?;
    Ok(rows
        .iter()
        .map(|r| KeyColumn {
            name: r.get(0),
            ty: r.get(1),
            collatable: r.get(2),
            ordering: r.get(3),
            nested: r.get(4),
        })
        .collect())
}

/// How ranges of the source's primary key `source` order each column, given the target's
/// `target` ([`Key::exprs`]); None when a key column holds text that `COLLATE` cannot reach
/// and the two servers sort it differently: the table is then compared whole.
fn key_exprs(source: &[KeyColumn], target: &[KeyColumn]) -> Option<Vec<String>> {
    source
        .iter()
        .map(|col| {
            let same = target
                .iter()
                .any(|other| other.name == col.name && other.ordering == col.ordering);
            if same || col.ordering.is_empty() {
                Some(ident(&col.name))
            } else if col.nested {
                None
            } else if col.collatable {
                Some(format!("{} COLLATE \"C\"", ident(&col.name)))
            } else {
                Some(ident(&col.name))
            }
        })
        .collect()
}

/// The source's primary key of `t`, ordered so that both sides agree ([`Key::exprs`]).
pub(crate) async fn primary_key(
    source: &Client,
    target: &Client,
    t: &QualName,
) -> Result<Option<Key>> {
    let on_source = key_columns(source, t, Side::Source, None).await?;
    if on_source.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = on_source.iter().map(|c| c.name.clone()).collect();
    let on_target = key_columns(target, t, Side::Target, Some(&names)).await?;
    let Some(exprs) = key_exprs(&on_source, &on_target) else {
        return Ok(None);
    };
    Ok(Some(Key {
        columns: on_source.iter().map(|c| c.name.clone()).collect(),
        types: on_source.iter().map(|c| c.ty.clone()).collect(),
        exprs,
    }))
}

fn key_list(key: &Key) -> String {
    key.exprs.join(", ")
}

fn key_tuple(key: &Key, values: &[String]) -> String {
    values
        .iter()
        .zip(&key.types)
        .map(|(v, ty)| format!("{}::{ty}", literal(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn range_predicate(
    key: &Key,
    after: Option<&Vec<String>>,
    up_to: Option<&Vec<String>>,
) -> String {
    let cols = key_list(key);
    let mut parts = Vec::new();
    if let Some(a) = after {
        parts.push(format!("({cols}) > ({})", key_tuple(key, a)));
    }
    if let Some(u) = up_to {
        parts.push(format!("({cols}) <= ({})", key_tuple(key, u)));
    }
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" AND ")
    }
}

pub(crate) async fn range_digest(
    c: &Client,
    t: &QualName,
    key: &Key,
    predicate: &str,
    side: Side,
) -> Result<(i64, String)> {
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg(md5({row}), '' ORDER BY {keys})), '') \
         FROM ONLY {table} WHERE {predicate}",
        row = row_text(t),
        keys = key_list(key),
        table = t.quoted(),
    );
    let row = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| Error::sql(side, format!("checksum a range of {t}"), e))?;
    Ok((row.get(0), row.get(1)))
}

/// The text of a row of `t` in a statement that reads `FROM ONLY t` without an alias: its
/// whole-row reference by schema and name, which no column can shadow (a column named like
/// the table or its alias would, in `alias::text`).
fn row_text(t: &QualName) -> String {
    format!("ROW({}.*)::text", t.quoted())
}

pub(crate) async fn whole_digest(
    c: &Client,
    t: &QualName,
    predicate: &str,
    side: Side,
) -> Result<(i64, String)> {
    let sql = format!(
        "SELECT count(*), coalesce(sum(('x' || substr(md5({row}), 1, 15))::bit(60)::bigint), 0)::text \
         FROM ONLY {table} WHERE {predicate}",
        row = row_text(t),
        table = t.quoted()
    );
    let row = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| Error::sql(side, format!("checksum {t}"), e))?;
    Ok((row.get(0), row.get(1)))
}

/// The ranges from `first` to `last` cut at `cuts` (in key order): `(first, c1]`, `(c1, c2]`, …,
/// `(cn, last]`; an open end is `None`. With no cut, the one range `(first, last]`. Together
/// they cover `(first, last]` with no gap and no overlap.
pub(crate) fn between(first: Bound, cuts: Vec<Vec<String>>, last: Bound) -> Vec<(Bound, Bound)> {
    let mut prev = first;
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    for c in cuts {
        ranges.push((prev.take(), Some(c.clone())));
        prev = Some(c);
    }
    ranges.push((prev, last));
    ranges
}

/// Range boundaries of `t`'s key on the source, among the rows `within` selects (`true`: all):
/// every `chunk`-th key, as text per column.
pub(crate) async fn boundaries(
    c: &Client,
    t: &QualName,
    key: &Key,
    within: &str,
    chunk: u64,
) -> Result<Vec<Vec<String>>> {
    // The key's columns under names of ours (`seren_k1`, …): a column of the table may be
    // called anything, `seren_rn` too.
    let text_cols: Vec<String> = (1..=key.columns.len())
        .map(|i| format!("seren_k{i}::text"))
        .collect();
    let cols: Vec<String> = key
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} AS seren_k{}", ident(c), i + 1))
        .collect();
    let sql = format!(
        "SELECT {text} FROM (SELECT {cols}, row_number() OVER (ORDER BY {order}) AS seren_rn \
         FROM ONLY {table} WHERE {within}) s WHERE seren_rn % {chunk} = 0 ORDER BY seren_rn",
        text = text_cols.join(", "),
        cols = cols.join(", "),
        order = key_list(key),
        table = t.quoted(),
        chunk = chunk.max(1),
    );
    let rows = c
        .query(&sql, &[])
        .await
        .map_err(|e| Error::sql(Side::Source, format!("read range boundaries of {t}"), e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (0..key.columns.len())
                .map(|i| r.get::<_, String>(i))
                .collect()
        })
        .collect())
}

struct Ctx {
    opts: VerifyOptions,
    names: Option<SyncNames>,
}

impl Ctx {
    /// While replication runs: wait until the target has what the source has now.
    async fn catch_up(&self, source: &Client) -> Result<Option<String>> {
        match &self.names {
            Some(n) => Ok(Some(
                sync::wait_caught_up(source, n, self.opts.catch_up_timeout).await?,
            )),
            None => Ok(None),
        }
    }
}

async fn table_exists(c: &Client, t: &QualName) -> Result<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace \
             WHERE n.nspname = $1 AND r.relname = $2",
        &[&t.schema, &t.name],
    )
    .await
    .map_err(|e| Error::sql(Side::Target, "look up a table", e))?
    .is_some())
}

/// A session to compare on: [`connect`]'s pinned settings (DateStyle, float digits, …) and
/// `TimeZone = UTC`, so that a `timestamptz` reads the same from two servers set to different
/// zones and rows are compared by value, not by how a server's defaults render them.
pub(crate) async fn compare_session(url: &ConnUrl, side: Side) -> Result<Client> {
    let c = connect(url, side).await?;
    c.batch_execute("SET TimeZone = 'UTC'")
        .await
        .map_err(|e| Error::sql(side, "set the time zone for comparing", e))?;
    Ok(c)
}

async fn verify_table(ctx: &Ctx, table: QualName) -> Result<TableResult> {
    let o = &ctx.opts;
    let (source, target) = tokio::try_join!(
        compare_session(&o.source, Side::Source),
        compare_session(&o.target, Side::Target)
    )?;
    let mut result = TableResult {
        table: table.clone(),
        method: Method::WholeTable,
        source_rows: 0,
        target_rows: 0,
        ranges: 0,
        mismatches: Vec::new(),
        missing_on_target: false,
    };
    if !table_exists(&target, &table).await? {
        result.missing_on_target = true;
        return Ok(result);
    }
    let Some(key) = primary_key(&source, &target, &table).await? else {
        let mut attempt = 0;
        loop {
            let (s, t) = tokio::try_join!(
                whole_digest(&source, &table, "true", Side::Source),
                whole_digest(&target, &table, "true", Side::Target)
            )?;
            result.source_rows = s.0;
            result.target_rows = t.0;
            result.ranges = 1;
            if s == t || ctx.names.is_none() || attempt == 3 {
                if s != t {
                    result.mismatches.push(Mismatch {
                        key: Vec::new(),
                        after: None,
                        up_to: None,
                        source_rows: s.0,
                        target_rows: t.0,
                    });
                }
                return Ok(result);
            }
            attempt += 1;
            ctx.catch_up(&source).await?;
        }
    };
    result.method = Method::KeyRanges;
    let bounds = boundaries(&source, &table, &key, "true", o.chunk_rows).await?;
    let ranges = between(None, bounds, None);
    result.ranges = ranges.len();
    // Each differing range with its predicate, and the counts of its latest comparison.
    let mut differing: Vec<(Mismatch, String)> = Vec::new();
    for (after, up_to) in ranges {
        let p = range_predicate(&key, after.as_ref(), up_to.as_ref());
        let (s, t) = tokio::try_join!(
            range_digest(&source, &table, &key, &p, Side::Source),
            range_digest(&target, &table, &key, &p, Side::Target)
        )?;
        result.source_rows += s.0;
        result.target_rows += t.0;
        if s != t {
            let m = Mismatch {
                key: key.columns.clone(),
                after,
                up_to,
                source_rows: s.0,
                target_rows: t.0,
            };
            differing.push((m, p));
        }
    }
    // Under live replication, a range may differ only because rows changed meanwhile: read
    // those again once the target has caught up.
    let mut attempt = 0;
    while !differing.is_empty() && ctx.names.is_some() && attempt < 3 {
        attempt += 1;
        ctx.catch_up(&source).await?;
        let mut still = Vec::new();
        for (mut m, p) in differing {
            let (s, t) = tokio::try_join!(
                range_digest(&source, &table, &key, &p, Side::Source),
                range_digest(&target, &table, &key, &p, Side::Target)
            )?;
            if s != t {
                (m.source_rows, m.target_rows) = (s.0, t.0);
                still.push((m, p));
            }
        }
        differing = still;
    }
    result.mismatches = differing.into_iter().map(|(m, _)| m).collect();
    Ok(result)
}

/// Compare every selected table of the source with the target.
///
/// # Errors
/// [`Error::Connect`] / [`Error::Sql`], or [`Error::CatchUpTimeout`] when replication does not
/// catch up in time.
pub async fn verify(opts: VerifyOptions) -> Result<VerifyReport> {
    if opts.jobs == 0 {
        return Err(Error::Usage("--jobs must be at least 1".into()));
    }
    let (source, target) = tokio::try_join!(
        connect(&opts.source, Side::Source),
        connect(&opts.target, Side::Target)
    )?;
    let names = SyncNames::for_target(&opts.target);
    let syncing = sync::subscription_exists(&target, &names).await?
        && sync::source_objects(&source, &names).await?.0;
    let cat = catalog::read(&source).await?;
    let mut tables: Vec<QualName> = cat
        .tables
        .iter()
        .filter(|t| opts.filter.selects(&t.name) && !opts.filter.is_schema_only(&t.name))
        .map(|t| t.name.clone())
        .collect();
    tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    let ctx = Arc::new(Ctx {
        opts,
        names: syncing.then_some(names),
    });
    let compared_at_lsn = ctx.catch_up(&source).await?;
    let jobs = ctx.opts.jobs;
    let results: Vec<Result<TableResult>> = stream::iter(tables)
        .map(|t| {
            let ctx = ctx.clone();
            async move { verify_table(&ctx, t).await }
        })
        .buffered(jobs)
        .collect()
        .await;
    let tables = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(VerifyReport {
        tables,
        compared_at_lsn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, collatable: bool, ordering: &str, nested: bool) -> KeyColumn {
        KeyColumn {
            name: name.into(),
            ty: "text".into(),
            collatable,
            ordering: ordering.into(),
            nested,
        }
    }

    #[test]
    fn text_keys_get_collate_c_only_where_the_two_sides_sort_them_differently() {
        let icu72 = "i:en-US:153.120";
        let icu60 = "i:en-US:153.80";
        // The same ordering on both sides: the column as it is, so its index serves.
        assert_eq!(
            key_exprs(
                &[col("w", true, icu72, false)],
                &[col("w", true, icu72, false)]
            ),
            Some(vec!["\"w\"".to_owned()])
        );
        // Another ICU version, or bytes against a locale: COLLATE "C".
        assert_eq!(
            key_exprs(
                &[col("w", true, icu72, false)],
                &[col("w", true, icu60, false)]
            ),
            Some(vec!["\"w\" COLLATE \"C\"".to_owned()])
        );
        assert_eq!(
            key_exprs(
                &[col("w", true, "bytes", false)],
                &[col("w", true, icu72, false)]
            ),
            Some(vec!["\"w\" COLLATE \"C\"".to_owned()])
        );
        // Not text: as it is, whatever the collations.
        assert_eq!(
            key_exprs(
                &[col("id", false, "", false)],
                &[col("id", false, "", false)]
            ),
            Some(vec!["\"id\"".to_owned()])
        );
        // Text inside a range or composite that the two sides sort differently: no ranges.
        assert_eq!(
            key_exprs(
                &[col("id", false, "", false), col("r", false, icu72, true)],
                &[col("id", false, "", false), col("r", false, "bytes", true)]
            ),
            None
        );
    }
}

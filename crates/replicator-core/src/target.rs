//! The target database: whether it exists and what it holds, creating or replacing it, and the
//! bookkeeping that makes a run resumable.
//!
//! Bookkeeping lives in the schema `_seren_replicator` of the target database. Each unit of
//! data and each post-data item is recorded in the same transaction as its effect, so after any
//! failure the records say exactly what is in place. The schema is dropped when a run
//! completes, leaving the target with exactly the source's objects.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::{Error, Result, Side};
use crate::sql::{ident, literal};

/// The bookkeeping schema.
pub const BOOKKEEPING_SCHEMA: &str = "_seren_replicator";

/// What the target database holds before a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// No such database: it will be created.
    Missing,
    /// Exists and holds no user objects.
    Empty,
    /// Holds an interrupted run's bookkeeping (and whatever that run restored).
    Interrupted,
    /// Holds a complete copy whose replication has not started yet: the bookkeeping records
    /// the copy as complete, and the source's slot holds every change since its snapshot.
    AwaitingReplication,
    /// Holds this many user objects.
    NonEmpty(u64),
}

/// The database to connect to for CREATE/DROP DATABASE.
fn maintenance_url(target: &ConnUrl) -> ConnUrl {
    target.with_dbname(if target.dbname == "postgres" {
        "template1"
    } else {
        "postgres"
    })
}

/// Connect to the target's maintenance database.
///
/// # Errors
/// [`Error::Connect`].
pub async fn connect_maintenance(target: &ConnUrl) -> Result<Client> {
    connect(&maintenance_url(target), Side::Target).await
}

/// Inspect the target database.
///
/// # Errors
/// [`Error::Connect`] / [`Error::Sql`].
pub async fn state(maintenance: &Client, target: &ConnUrl) -> Result<TargetState> {
    let exists = maintenance
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&target.dbname],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "look up the target database", e))?
        .is_some();
    if !exists {
        return Ok(TargetState::Missing);
    }
    let client = connect(target, Side::Target).await?;
    let user_ns = crate::catalog::USER_NAMESPACES;
    let row = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                   (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE {user_ns} AND n.nspname <> $1)
                 + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE {user_ns} AND n.nspname <> $1)
                 + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                     WHERE {user_ns} AND n.nspname <> $1 AND t.typrelid = 0 AND t.typelem = 0)
                 + (SELECT count(*) FROM pg_namespace n WHERE {user_ns}
                     AND n.nspname NOT IN ('public', $1))
                 + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
                 + (SELECT count(*) FROM pg_largeobject_metadata)"
            ),
            &[&BOOKKEEPING_SCHEMA],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "inspect the target database", e))?;
    let bookkeeping: bool = row.get(0);
    let objects: i64 = row.get(1);
    Ok(if bookkeeping {
        let complete = client
            .query_opt(
                &format!(
                    "SELECT 1 FROM {}.steps WHERE key = $1",
                    ident(BOOKKEEPING_SCHEMA)
                ),
                &[&COMPLETE_STEP],
            )
            .await
            .map_err(|e| Error::sql(Side::Target, "read the interrupted run's records", e))?
            .is_some();
        if complete {
            TargetState::AwaitingReplication
        } else {
            TargetState::Interrupted
        }
    } else if objects > 0 {
        TargetState::NonEmpty(objects as u64)
    } else {
        TargetState::Empty
    })
}

/// The server's system identifier, when the role may read it.
pub async fn server_identifier(c: &Client) -> Option<String> {
    c.query_one(
        "SELECT system_identifier::text FROM pg_control_system()",
        &[],
    )
    .await
    .ok()
    .map(|r| r.get(0))
}

/// Encoding and locale to create the target database with.
#[derive(Debug, Clone)]
pub struct DatabaseLocale {
    /// e.g. `UTF8`.
    pub encoding: String,
    /// `LC_COLLATE`.
    pub collate: String,
    /// `LC_CTYPE`.
    pub ctype: String,
    /// The default collation's provider: `c` (libc), `i` (ICU, from 15) or `b` (builtin, from
    /// 17).
    pub provider: String,
    /// The ICU or builtin locale (`daticulocale` on 15 and 16, `datlocale` from 17).
    pub locale: Option<String>,
    /// ICU tailoring rules (`daticurules`, from 16).
    pub icu_rules: Option<String>,
}

impl DatabaseLocale {
    /// The clauses of CREATE DATABASE that give the source's provider and its locale (empty for
    /// libc).
    fn provider_clauses(&self) -> String {
        let locale = self.locale.as_deref().unwrap_or_default();
        match self.provider.as_str() {
            "i" => {
                let mut s = format!(" LOCALE_PROVIDER icu ICU_LOCALE {}", literal(locale));
                if let Some(rules) = self.icu_rules.as_deref().filter(|r| !r.is_empty()) {
                    s.push_str(&format!(" ICU_RULES {}", literal(rules)));
                }
                s
            }
            "b" => format!(
                " LOCALE_PROVIDER builtin BUILTIN_LOCALE {}",
                literal(locale)
            ),
            _ => String::new(),
        }
    }
}

/// Read the source database's encoding and locale. The provider's columns are read through
/// `to_jsonb`, so that one query serves every major (they came in 15, 16 and 17).
///
/// # Errors
/// [`Error::Sql`].
pub async fn source_locale(source: &Client) -> Result<DatabaseLocale> {
    let row = source
        .query_one(
            "SELECT pg_encoding_to_char(d.encoding), d.datcollate::text, d.datctype::text,
                    coalesce(to_jsonb(d) ->> 'datlocprovider', 'c'),
                    coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale'),
                    to_jsonb(d) ->> 'daticurules'
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "read the database locale", e))?;
    Ok(DatabaseLocale {
        encoding: row.get(0),
        collate: row.get(1),
        ctype: row.get(2),
        provider: row.get(3),
        locale: row.get(4),
        icu_rules: row.get(5),
    })
}

/// Create the target database from `template0` with the source's encoding, locale and
/// collation provider; when the target server lacks that locale (or was built without ICU),
/// fall back to less of it (the libc locale alone, then the server's default) and return a
/// warning that says what the database sorts by instead.
///
/// # Errors
/// [`Error::Sql`] when even the plain CREATE DATABASE fails (e.g. no CREATEDB privilege).
pub async fn create_database(
    maintenance: &Client,
    target: &ConnUrl,
    locale: &DatabaseLocale,
) -> Result<Option<String>> {
    let name = ident(&target.dbname);
    // From 15 template0 may have another provider (initdb --locale-provider=icu): a libc
    // database must say so, or it would sort by ICU.
    let libc_provider = if crate::catalog::major_version(maintenance, Side::Target).await? >= 15 {
        " LOCALE_PROVIDER libc"
    } else {
        ""
    };
    let base = format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        literal(&locale.encoding),
        literal(&locale.collate),
        literal(&locale.ctype)
    );
    let libc = format!("{base}{libc_provider}");
    let provider = locale.provider_clauses();
    let mut refused = None;
    if !provider.is_empty() {
        match maintenance
            .batch_execute(&format!("{base}{provider}"))
            .await
        {
            Ok(()) => return Ok(None),
            Err(e) => refused = Some(crate::error::pg_message(&e)),
        }
    }
    let source_sorts = match (locale.provider.as_str(), &locale.locale) {
        ("i", Some(l)) => format!("ICU locale {l}"),
        ("b", Some(l)) => format!("builtin locale {l}"),
        _ => format!("{}/{}", locale.collate, locale.ctype),
    };
    match maintenance.batch_execute(&libc).await {
        Ok(()) => Ok(refused.map(|why| {
            format!(
                "created {} with the libc locale {}/{}: the source's {source_sorts} is not \
                 available there ({why}); text may sort differently on the target",
                target.dbname, locale.collate, locale.ctype
            )
        })),
        Err(first) => {
            let plain = format!(
                "CREATE DATABASE {name} TEMPLATE template0 ENCODING {}",
                literal(&locale.encoding)
            );
            maintenance.batch_execute(&plain).await.map_err(|e| {
                Error::sql(
                    Side::Target,
                    format!("create database {}", target.dbname),
                    e,
                )
            })?;
            Ok(Some(format!(
                "created {} with the target server's default locale: the source's \
                 ({source_sorts}) is not available there ({})",
                target.dbname,
                refused.unwrap_or_else(|| crate::error::pg_message(&first))
            )))
        }
    }
}

/// End this tool's sessions on the target database that belong to no live run: those of a
/// process killed with `kill -9`, whose `psql` child may still be restoring, or whose backends
/// have not noticed the broken connection yet. Only a run holding the run lock calls this (so no
/// live run into this target has sessions there); it waits until they are gone, so that the
/// bookkeeping it reads next can no longer change under it. Sessions named as this run's are
/// ended, and those with the tool's default name; `lost` is the `application_name`
/// prefix of earlier runs known to be gone (see [`crate::init::InitOptions::take_over_lost_run`]):
/// their sessions are ended too. Returns how many it ended.
///
/// # Errors
/// [`Error::Sql`].
pub async fn end_leftover_sessions(
    maintenance: &Client,
    target: &ConnUrl,
    lost: Option<&str>,
) -> Result<usize> {
    let app = target
        .application_name
        .as_deref()
        .unwrap_or(crate::connect::APPLICATION_NAME);
    let lost = lost.filter(|p| !p.is_empty()).unwrap_or(app);
    // This run's own name, the tool's default (a killed local run's, or a remote worker's
    // whose URL named none), and the lost runs' prefix.
    let names = vec![app.to_owned(), crate::connect::APPLICATION_NAME.to_owned()];
    let sql = "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
               AND (application_name = ANY($2) OR left(application_name, length($3)) = $3) \
               AND pid <> pg_backend_pid()";
    let fail = |e| Error::sql(Side::Target, "end the sessions of an interrupted run", e);
    let pids: Vec<i32> = maintenance
        .query(sql, &[&target.dbname, &names, &lost])
        .await
        .map_err(fail)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for pid in &pids {
        maintenance
            .execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .map_err(fail)?;
    }
    for _ in 0..100 {
        let left = maintenance
            .query(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .map_err(fail)?;
        if left.is_empty() {
            return Ok(pids.len());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(Error::Preflight(format!(
        "sessions of an earlier run are still open on the target database {} after 10 s; end \
         them (pg_stat_activity, application_name {app}) and try again",
        target.dbname
    )))
}

/// Drop the target database (closing other sessions on it).
///
/// `WITH (FORCE)` exists from PostgreSQL 13 on; on 12 the other sessions are ended first and the
/// drop is tried again while one that was connecting is still there (`55006`, for up to 10 s).
///
/// # Errors
/// [`Error::Sql`].
pub async fn drop_database(maintenance: &Client, target: &ConnUrl) -> Result<()> {
    let what = || format!("drop database {}", target.dbname);
    let fail = |e| Error::sql(Side::Target, what(), e);
    if crate::catalog::major_version(maintenance, Side::Target).await? >= 13 {
        return maintenance
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(&target.dbname)
            ))
            .await
            .map_err(fail);
    }
    let drop = format!("DROP DATABASE IF EXISTS {}", ident(&target.dbname));
    let mut attempt = 0;
    loop {
        attempt += 1;
        maintenance
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&target.dbname],
            )
            .await
            .map_err(fail)?;
        match maintenance.batch_execute(&drop).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < 100 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(fail(e)),
        }
    }
}

/// A unit of data as recorded in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRecord {
    /// Stable id: `schema.table` or `schema.table#k`.
    pub id: String,
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// First block (inclusive).
    pub from_block: Option<i64>,
    /// Last block (exclusive).
    pub to_block: Option<i64>,
    /// Whether its rows are in.
    pub done: bool,
}

/// The step recorded once every part of the copy is in: the target then holds a complete
/// copy, and only replication (or the removal of the bookkeeping) is left.
pub const COMPLETE_STEP: &str = "complete";

/// Which source a copy comes from, recorded with its plan so that `--resume` can refuse
/// another source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIdentity {
    /// The cluster's system identifier, when the role may read it (`pg_control_system()`).
    pub system_identifier: Option<String>,
    /// The database's OID.
    pub database_oid: u32,
    /// The database's name.
    pub database: String,
    /// The URL it was reached by, without its password.
    pub url: String,
    /// `host:port` of that URL: what tells two servers apart when the system identifier
    /// cannot be read.
    pub server: String,
}

impl SourceIdentity {
    /// Read the identity of the database `source` is connected to.
    ///
    /// # Errors
    /// [`Error::Sql`].
    pub async fn read(source: &Client, url: &ConnUrl) -> Result<Self> {
        let row = source
            .query_one(
                "SELECT oid, datname::text FROM pg_database WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(|e| Error::sql(Side::Source, "read the source database's identity", e))?;
        // Managed servers may not let every role call pg_control_system().
        let system_identifier = server_identifier(source).await;
        Ok(Self {
            system_identifier,
            database_oid: row.get(0),
            database: row.get(1),
            url: url.redacted(),
            server: format!("{}:{}", url.host, url.port),
        })
    }

    /// Why a copy recorded as from `self` must not be resumed from `now` (`None`: it may).
    pub fn mismatch(&self, now: &SourceIdentity) -> Option<String> {
        let other_cluster = match (&self.system_identifier, &now.system_identifier) {
            (Some(a), Some(b)) => a != b,
            _ => self.server != now.server,
        };
        (other_cluster || self.database_oid != now.database_oid || self.database != now.database)
            .then(|| {
                format!(
                    "the interrupted copy came from the database {} of {} ({}), and this source is \
                     the database {} of {} ({})",
                    self.database,
                    self.url,
                    self.describe(),
                    now.database,
                    now.url,
                    now.describe()
                )
            })
    }

    fn describe(&self) -> String {
        match &self.system_identifier {
            Some(id) => format!("system {id}, database OID {}", self.database_oid),
            None => format!("database OID {}", self.database_oid),
        }
    }
}

/// Create the bookkeeping schema and record the plan and the source, in one transaction.
///
/// # Errors
/// [`Error::Sql`].
pub async fn create_bookkeeping(
    client: &Client,
    units: &[UnitRecord],
    source: &SourceIdentity,
    fingerprint: &str,
) -> Result<()> {
    let s = ident(BOOKKEEPING_SCHEMA);
    let fail = |e| Error::sql(Side::Target, "create the bookkeeping schema", e);
    client
        .batch_execute(&format!(
            "BEGIN;
             CREATE SCHEMA {s};
             CREATE TABLE {s}.steps (key text PRIMARY KEY, done_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE {s}.units (id text PRIMARY KEY, schema_name text NOT NULL,
                 table_name text NOT NULL, from_block int8, to_block int8,
                 done boolean NOT NULL DEFAULT false, rows_copied int8, bytes_copied int8);
             CREATE TABLE {s}.run (system_identifier text, database_oid int8 NOT NULL,
                 database_name text NOT NULL, source_url text NOT NULL, server text NOT NULL,
                 fingerprint text NOT NULL);
             COMMENT ON SCHEMA {s} IS 'postgres-seren-replicator: progress of an unfinished init; dropped when it completes';"
        ))
        .await
        .map_err(fail)?;
    let result = async {
        client
            .execute(
                &format!("INSERT INTO {s}.run VALUES ($1, $2, $3, $4, $5, $6)"),
                &[
                    &source.system_identifier,
                    &i64::from(source.database_oid),
                    &source.database,
                    &source.url,
                    &source.server,
                    &fingerprint,
                ],
            )
            .await
            .map_err(fail)?;
        insert_units(client, units).await?;
        client.batch_execute("COMMIT").await.map_err(fail)
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

async fn insert_units(client: &Client, units: &[UnitRecord]) -> Result<()> {
    let stmt = client
        .prepare(&format!(
            "INSERT INTO {}.units (id, schema_name, table_name, from_block, to_block) VALUES ($1, $2, $3, $4, $5)",
            ident(BOOKKEEPING_SCHEMA)
        ))
        .await
        .map_err(|e| Error::sql(Side::Target, "record the plan", e))?;
    for u in units {
        client
            .execute(
                &stmt,
                &[&u.id, &u.schema, &u.table, &u.from_block, &u.to_block],
            )
            .await
            .map_err(|e| Error::sql(Side::Target, "record the plan", e))?;
    }
    Ok(())
}

/// The source and plan fingerprint an interrupted run recorded (`None` for bookkeeping
/// written before they were).
///
/// # Errors
/// [`Error::Sql`].
pub async fn recorded_source(client: &Client) -> Result<Option<(SourceIdentity, String)>> {
    let s = ident(BOOKKEEPING_SCHEMA);
    let exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&format!("{s}.run")])
        .await
        .map_err(|e| Error::sql(Side::Target, "read the interrupted run's records", e))?
        .get::<_, bool>(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT system_identifier, database_oid, database_name, source_url, server, fingerprint FROM {s}.run"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "read the interrupted run's records", e))?;
    Ok(row.map(|r| {
        (
            SourceIdentity {
                system_identifier: r.get(0),
                database_oid: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                database: r.get(2),
                url: r.get(3),
                server: r.get(4),
            },
            r.get(5),
        )
    }))
}

/// Replace the records of `table`'s units with `unit` (one transaction): a split table whose
/// ranges did not all finish is copied again whole under a new snapshot, since its rows may
/// have moved between blocks since the first.
///
/// # Errors
/// [`Error::Sql`].
pub async fn replace_units(
    client: &Client,
    schema: &str,
    table: &str,
    unit: &UnitRecord,
) -> Result<()> {
    let fail = |e| Error::sql(Side::Target, "record the plan", e);
    client.batch_execute("BEGIN").await.map_err(fail)?;
    let result = async {
        client
            .execute(
                &format!(
                    "DELETE FROM {}.units WHERE schema_name = $1 AND table_name = $2",
                    ident(BOOKKEEPING_SCHEMA)
                ),
                &[&schema, &table],
            )
            .await
            .map_err(fail)?;
        insert_units(client, std::slice::from_ref(unit)).await?;
        client.batch_execute("COMMIT").await.map_err(fail)
    }
    .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// Read an interrupted run's records: its units and the keys of its finished steps.
///
/// # Errors
/// [`Error::Sql`].
pub async fn load_bookkeeping(client: &Client) -> Result<(Vec<UnitRecord>, Vec<String>)> {
    let s = ident(BOOKKEEPING_SCHEMA);
    let units = client
        .query(
            &format!("SELECT id, schema_name, table_name, from_block, to_block, done FROM {s}.units ORDER BY id"),
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "read the interrupted run's records", e))?
        .iter()
        .map(|r| UnitRecord {
            id: r.get(0),
            schema: r.get(1),
            table: r.get(2),
            from_block: r.get(3),
            to_block: r.get(4),
            done: r.get(5),
        })
        .collect();
    let steps = client
        .query(&format!("SELECT key FROM {s}.steps"), &[])
        .await
        .map_err(|e| Error::sql(Side::Target, "read the interrupted run's records", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((units, steps))
}

/// SQL that records a finished step; run it inside the step's own transaction.
pub fn record_step_sql(key: &str) -> String {
    format!(
        "INSERT INTO {}.steps (key) VALUES ({}) ON CONFLICT (key) DO NOTHING;",
        ident(BOOKKEEPING_SCHEMA),
        literal(key)
    )
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The work is ours to do in this transaction; its record commits with it.
    Claimed,
    /// An earlier attempt committed it (perhaps one whose COMMIT reply was lost).
    AlreadyDone,
}

/// Claim step `key` as the first statement of the transaction that does it. The record is
/// written first, so that a concurrent or earlier attempt of the same step (one whose reply to
/// COMMIT was lost, and which may still be committing) holds the key's index entry until it
/// ends: this insert waits for it and then inserts nothing if it committed. A step can thus
/// never be applied twice, whatever a reconnect finds.
///
/// # Errors
/// [`Error::Sql`].
pub async fn claim_step(client: &Client, key: &str) -> Result<Claim> {
    let n = client
        .execute(
            &format!(
                "INSERT INTO {}.steps (key) VALUES ($1) ON CONFLICT (key) DO NOTHING",
                ident(BOOKKEEPING_SCHEMA)
            ),
            &[&key],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, format!("record {key}"), e))?;
    Ok(if n == 1 {
        Claim::Claimed
    } else {
        Claim::AlreadyDone
    })
}

/// Claim unit `id` as the first statement of the transaction that copies it: marks it done
/// only if no attempt has (the row lock makes a second attempt wait for the first to end, and
/// then find it done). See [`claim_step`].
///
/// # Errors
/// [`Error::Sql`].
pub async fn claim_unit(client: &Client, id: &str) -> Result<Claim> {
    let n = client
        .execute(
            &format!(
                "UPDATE {}.units SET done = true WHERE id = $1 AND NOT done",
                ident(BOOKKEEPING_SCHEMA)
            ),
            &[&id],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, format!("record {id}"), e))?;
    Ok(if n == 1 {
        Claim::Claimed
    } else {
        Claim::AlreadyDone
    })
}

/// SQL that stores a claimed unit's counts; run it inside the unit's transaction.
pub fn record_unit_sql(id: &str, rows: u64, bytes: u64) -> String {
    format!(
        "UPDATE {}.units SET rows_copied = {rows}, bytes_copied = {bytes} WHERE id = {};",
        ident(BOOKKEEPING_SCHEMA),
        literal(id)
    )
}

/// A finished unit's recorded counts (rows, bytes), for the report after a retry found it
/// done.
///
/// # Errors
/// [`Error::Sql`].
pub async fn unit_counts(client: &Client, id: &str) -> Result<(u64, u64)> {
    let row = client
        .query_opt(
            &format!(
                "SELECT coalesce(rows_copied, 0), coalesce(bytes_copied, 0) FROM {}.units WHERE id = $1",
                ident(BOOKKEEPING_SCHEMA)
            ),
            &[&id],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, format!("read the record of {id}"), e))?;
    Ok(row.map_or((0, 0), |r| {
        (
            u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        )
    }))
}

/// Remove the bookkeeping once the run is complete.
///
/// # Errors
/// [`Error::Sql`].
pub async fn drop_bookkeeping(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            ident(BOOKKEEPING_SCHEMA)
        ))
        .await
        .map_err(|e| Error::sql(Side::Target, "remove the bookkeeping schema", e))
}

/// The source's extensions (besides plpgsql) and those of them the target server cannot
/// install: `(needed, missing)`.
///
/// # Errors
/// [`Error::Sql`] when either catalog cannot be read.
pub async fn missing_extensions(
    source: &Client,
    target: &Client,
) -> Result<(Vec<String>, Vec<String>)> {
    let needed: Vec<String> = source
        .query(
            "SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "list extensions", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if needed.is_empty() {
        return Ok((needed, Vec::new()));
    }
    let available: std::collections::HashSet<String> = target
        .query(
            "SELECT name FROM pg_available_extensions WHERE name = ANY($1)",
            &[&needed],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "list available extensions", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing = needed
        .iter()
        .filter(|e| !available.contains(*e))
        .cloned()
        .collect();
    Ok((needed, missing))
}

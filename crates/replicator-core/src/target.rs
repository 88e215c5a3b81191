//! The target database: whether it exists and what it holds, creating or replacing it, and the
//! bookkeeping that makes a run resumable.
//!
//! Bookkeeping lives in the schema `_seren_replicator` of the target database. Each unit of
//! data and each post-data item is recorded in the same transaction as its effect, so after any
//! failure the records say exactly what is in place. The schema is dropped when a run
//! completes, leaving the target with exactly the source's objects.

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
        TargetState::Interrupted
    } else if objects > 0 {
        TargetState::NonEmpty(objects as u64)
    } else {
        TargetState::Empty
    })
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
}

/// Read the source database's encoding and locale.
///
/// # Errors
/// [`Error::Sql`].
pub async fn source_locale(source: &Client) -> Result<DatabaseLocale> {
    let row = source
        .query_one(
            "SELECT pg_encoding_to_char(encoding), datcollate::text, datctype::text
             FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "read the database locale", e))?;
    Ok(DatabaseLocale {
        encoding: row.get(0),
        collate: row.get(1),
        ctype: row.get(2),
    })
}

/// Create the target database from `template0` with the source's encoding and locale; when the
/// target server lacks that locale, fall back to its default and return a warning.
///
/// # Errors
/// [`Error::Sql`] when even the plain CREATE DATABASE fails (e.g. no CREATEDB privilege).
pub async fn create_database(
    maintenance: &Client,
    target: &ConnUrl,
    locale: &DatabaseLocale,
) -> Result<Option<String>> {
    let name = ident(&target.dbname);
    let with_locale = format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        literal(&locale.encoding),
        literal(&locale.collate),
        literal(&locale.ctype)
    );
    match maintenance.batch_execute(&with_locale).await {
        Ok(()) => Ok(None),
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
                "created {} with the target server's default locale: the source's ({}/{}) is not \
                 available there ({})",
                target.dbname,
                locale.collate,
                locale.ctype,
                crate::error::pg_message(&first)
            )))
        }
    }
}

/// Drop the target database (closing other sessions on it).
///
/// # Errors
/// [`Error::Sql`].
pub async fn drop_database(maintenance: &Client, target: &ConnUrl) -> Result<()> {
    maintenance
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(&target.dbname)
        ))
        .await
        .map_err(|e| Error::sql(Side::Target, format!("drop database {}", target.dbname), e))
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

/// Create the bookkeeping schema and record the plan.
///
/// # Errors
/// [`Error::Sql`].
pub async fn create_bookkeeping(client: &Client, units: &[UnitRecord]) -> Result<()> {
    let s = ident(BOOKKEEPING_SCHEMA);
    client
        .batch_execute(&format!(
            "BEGIN;
             CREATE SCHEMA {s};
             CREATE TABLE {s}.steps (key text PRIMARY KEY, done_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE {s}.units (id text PRIMARY KEY, schema_name text NOT NULL,
                 table_name text NOT NULL, from_block int8, to_block int8,
                 done boolean NOT NULL DEFAULT false, rows_copied int8, bytes_copied int8);
             COMMENT ON SCHEMA {s} IS 'postgres-seren-replicator: progress of an unfinished init; dropped when it completes';
             COMMIT;"
        ))
        .await
        .map_err(|e| Error::sql(Side::Target, "create the bookkeeping schema", e))?;
    let stmt = client
        .prepare(&format!(
            "INSERT INTO {s}.units (id, schema_name, table_name, from_block, to_block) VALUES ($1, $2, $3, $4, $5)"
        ))
        .await
        .map_err(|e| Error::sql(Side::Target, "record the plan", e))?;
    client
        .batch_execute("BEGIN")
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
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| Error::sql(Side::Target, "record the plan", e))
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

/// SQL that marks a unit done; run it inside the unit's transaction.
pub fn record_unit_sql(id: &str, rows: u64, bytes: u64) -> String {
    format!(
        "UPDATE {}.units SET done = true, rows_copied = {rows}, bytes_copied = {bytes} WHERE id = {};",
        ident(BOOKKEEPING_SCHEMA),
        literal(id)
    )
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

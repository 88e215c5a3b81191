//! The embedded store: one SQLite file, the default when no DynamoDB table is configured.
//!
//! Each write is one `BEGIN IMMEDIATE` transaction (read, check, write), so several processes
//! sharing the file (a local coordinator and its workers) serialize on SQLite's lock; the WAL
//! journal lets readers go on meanwhile. A busy database is waited for up to `busy_timeout`
//! and then reported as a retryable error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{apply, check_legal, Change, Created, Cursor, Expect, JobStore, Page, StoreError};
use crate::job::{Job, Owner, Progress, Timestamp};
use crate::status::JobStatus;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    version         INTEGER NOT NULL,
    idempotency_key TEXT,
    record          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs (owner, created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at, job_id);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_idempotency
    ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
";

/// Jobs in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn backend(e: rusqlite::Error) -> StoreError {
    let retryable = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    StoreError::Backend {
        message: format!("sqlite: {e}"),
        retryable,
    }
}

fn decode(job_id: &str, record: &str) -> Result<Job, StoreError> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt {
        job_id: job_id.to_owned(),
        reason: e.to_string(),
    })
}

fn encode(job: &Job) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|e| StoreError::Backend {
        message: format!("encode job {}: {e}", job.job_id),
        retryable: false,
    })
}

fn read(conn: &Connection, job_id: &str) -> Result<Option<Job>, StoreError> {
    let record: Option<String> = conn
        .query_row(
            "SELECT record FROM jobs WHERE job_id = ?1",
            params![job_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    record.map(|r| decode(job_id, &r)).transpose()
}

fn write(conn: &Connection, job: &Job) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE jobs SET status = ?2, version = ?3, record = ?4 WHERE job_id = ?1",
        params![
            job.job_id,
            job.status.as_str(),
            i64::try_from(job.version).unwrap_or(i64::MAX),
            encode(job)?
        ],
    )
    .map_err(backend)?;
    Ok(())
}

fn conflict(job: &Job) -> StoreError {
    StoreError::Conflict {
        job_id: job.job_id.clone(),
        current: job.status,
        version: job.version,
    }
}

impl SqliteStore {
    /// Open (creating if needed) the store in `path`.
    ///
    /// # Errors
    /// When the file cannot be opened or is not a database of this schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let new = !path.exists();
        let conn = Connection::open(path).map_err(backend)?;
        if new {
            // Sealed URLs only, but still nobody else's business.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| StoreError::Backend {
                    message: format!("restrict {}: {e}", path.display()),
                    retryable: false,
                },
            )?;
        }
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// The file it uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the connection off the async runtime.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Backend {
                message: "sqlite connection lock poisoned".into(),
                retryable: false,
            })?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend {
            message: format!("sqlite task: {e}"),
            retryable: false,
        })?
    }
}

fn page(rows: Vec<(String, String)>, limit: u32) -> Result<Page, StoreError> {
    let mut jobs = rows
        .iter()
        .map(|(id, r)| decode(id, r))
        .collect::<Result<Vec<_>, _>>()?;
    let next = if jobs.len() > limit as usize {
        jobs.truncate(limit as usize);
        jobs.last().map(Cursor::after)
    } else {
        None
    };
    // Expired records are not shown, as DynamoDB's reads filter them (the cursor still moves
    // past them).
    let now = Timestamp::now().unix_seconds();
    jobs.retain(|j| j.ttl > now);
    Ok(Page { jobs, next })
}

fn collect(
    stmt: &mut rusqlite::Statement<'_>,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<(String, String)>, StoreError> {
    stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create(&self, job: &Job, limit: Option<u32>) -> Result<Created, StoreError> {
        let job = job.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            // This job's (fresh, random) id stored already: an earlier attempt of this very
            // create committed and its answer was lost.
            if let Some(stored) = read(&tx, &job.job_id)? {
                return Ok(Created::New(stored));
            }
            if let Some(key) = &job.idempotency_key {
                let existing: Option<(String, String)> = tx
                    .query_row(
                        "SELECT job_id, record FROM jobs WHERE owner = ?1 AND idempotency_key = ?2",
                        params![job.owner.as_str(), key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                if let Some((id, record)) = existing {
                    return Ok(Created::Existing(decode(&id, &record)?));
                }
            }
            if let Some(limit) = limit {
                let active: i64 = tx
                    .query_row(
                        "SELECT count(*) FROM jobs WHERE status IN ('pending', 'provisioning', 'running')",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                if active >= i64::from(limit) {
                    return Err(StoreError::LimitReached { limit });
                }
            }
            tx.execute(
                "INSERT INTO jobs (job_id, owner, status, created_at, version, idempotency_key, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    job.job_id,
                    job.owner.as_str(),
                    job.status.as_str(),
                    job.created_at.to_rfc3339(),
                    i64::try_from(job.version).unwrap_or(i64::MAX),
                    job.idempotency_key,
                    encode(&job)?
                ],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(Created::New(job))
        })
        .await
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let id = job_id.to_owned();
        let now = Timestamp::now().unix_seconds();
        // Expired records read as gone, as they do from DynamoDB.
        Ok(self
            .run(move |conn| read(conn, &id))
            .await?
            .filter(|j| j.ttl > now))
    }

    async fn list_by_owner(
        &self,
        owner: &Owner,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        let owner = owner.as_str().to_owned();
        let status = status.map(|s| s.as_str());
        let after = cursor.map(|c| (c.created_at.to_rfc3339(), c.job_id.clone()));
        self.run(move |conn| {
            // Newest first; the cursor is the last (oldest) job shown.
            let (at, id) = after.unwrap_or_else(|| ("9999".into(), String::new()));
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job_id, record FROM jobs
                     WHERE owner = ?1 AND (?2 IS NULL OR status = ?2)
                       AND (created_at < ?3 OR (created_at = ?3 AND job_id < ?4) OR ?4 = '')
                     ORDER BY created_at DESC, job_id DESC LIMIT ?5",
                )
                .map_err(backend)?;
            let rows = collect(
                &mut stmt,
                &[&owner, &status, &at, &id, &(i64::from(limit) + 1)],
            )?;
            page(rows, limit)
        })
        .await
    }

    async fn list_by_status(
        &self,
        status: JobStatus,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        let after = cursor.map(|c| (c.created_at.to_rfc3339(), c.job_id.clone()));
        self.run(move |conn| {
            let (at, id) = after.unwrap_or_else(|| (String::new(), String::new()));
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job_id, record FROM jobs
                     WHERE status = ?1 AND (created_at > ?2 OR (created_at = ?2 AND job_id > ?3))
                     ORDER BY created_at, job_id LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = collect(
                &mut stmt,
                &[&status.as_str(), &at, &id, &(i64::from(limit) + 1)],
            )?;
            page(rows, limit)
        })
        .await
    }

    async fn transition(
        &self,
        job_id: &str,
        expect: Expect,
        change: Change,
    ) -> Result<Job, StoreError> {
        check_legal(expect.status, change.to)?;
        let id = job_id.to_owned();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let job = read(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            if job.status != expect.status
                || expect.version.is_some_and(|v| v != job.version)
                || expect
                    .instance_id
                    .as_ref()
                    .is_some_and(|i| job.instance_id.as_ref() != Some(i))
            {
                return Err(conflict(&job));
            }
            let next = apply(&job, &change);
            write(&tx, &next)?;
            tx.commit().map_err(backend)?;
            Ok(next)
        })
        .await
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        instance_id: &str,
        progress: Option<&Progress>,
        at: Timestamp,
    ) -> Result<Job, StoreError> {
        let id = job_id.to_owned();
        let instance = instance_id.to_owned();
        let progress = progress.cloned();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let mut job = read(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            if job.status != JobStatus::Running || job.instance_id.as_deref() != Some(&instance) {
                return Err(conflict(&job));
            }
            job.heartbeat_at = Some(at);
            job.updated_at = at;
            job.version += 1;
            if let Some(p) = progress {
                job.progress = Some(p);
            }
            write(&tx, &job)?;
            tx.commit().map_err(backend)?;
            Ok(job)
        })
        .await
    }

    async fn request_cancel(&self, job_id: &str, at: Timestamp) -> Result<Job, StoreError> {
        let id = job_id.to_owned();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let mut job = read(&tx, &id)?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
            if job.status.is_terminal() {
                return Err(conflict(&job));
            }
            if job.cancel_requested_at.is_none() {
                job.cancel_requested_at = Some(at);
                job.updated_at = at;
                job.version += 1;
                write(&tx, &job)?;
            }
            tx.commit().map_err(backend)?;
            Ok(job)
        })
        .await
    }
}

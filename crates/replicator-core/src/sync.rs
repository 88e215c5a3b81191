//! Continuous replication after a copy, without a gap and without an overlap.
//!
//! The order is what makes it exact:
//! 1. `CREATE PUBLICATION` on the source for the tables the copy will fill (before the slot:
//!    pgoutput reads publication membership as of each change's position in the WAL);
//! 2. `CREATE_REPLICATION_SLOT … LOGICAL pgoutput (SNAPSHOT 'export')` on a replication
//!    connection: the slot streams every change after its consistent point, and the exported
//!    snapshot sees every change before it;
//! 3. the copy runs under that snapshot;
//! 4. `CREATE SUBSCRIPTION … WITH (create_slot = false, slot_name = …, copy_data = false)` on
//!    the target starts applying from the slot's consistent point.
//!
//! Names are derived from the target (server and database), so `status`, `sync --stop` and
//! `cutover` find them from the same two URLs.

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::conninfo::{ConnUrl, SslMode};
use crate::error::{Error, Result, Side};
use crate::filter::QualName;
use crate::replication::{CreatedSlot, ReplicationSession};
use crate::snapshot::Snapshot;
use crate::sql::{ident, literal};

/// Whether `init` sets up replication after the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// When the source and target allow it; otherwise say why in one line and copy only.
    Auto,
    /// Always; refuse to start when it cannot be done.
    Required,
    /// Copy only.
    Off,
}

/// The names of one replication: slot and publication on the source, subscription on the
/// target (all the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncNames {
    /// Replication slot on the source.
    pub slot: String,
    /// Publication on the source.
    pub publication: String,
    /// Subscription on the target.
    pub subscription: String,
}

impl SyncNames {
    /// The names for replicating into `target` (its server and database).
    pub fn for_target(target: &ConnUrl) -> Self {
        let mut h = Sha256::new();
        h.update(target.host.as_bytes());
        h.update([0]);
        h.update(target.port.to_string().as_bytes());
        h.update([0]);
        h.update(target.dbname.as_bytes());
        let digest = h.finalize();
        let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let name = format!("seren_{tag}");
        Self {
            slot: name.clone(),
            publication: name.clone(),
            subscription: name,
        }
    }
}

/// Which of `tables` logical replication can carry (permanent tables), and the rest.
///
/// # Errors
/// [`Error::Sql`].
pub async fn replicable(
    source: &Client,
    tables: &[QualName],
) -> Result<(Vec<QualName>, Vec<QualName>)> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let unlogged: Vec<(String, String)> = source
        .query(
            "SELECT n.nspname, c.relname FROM unnest($1::text[], $2::text[]) AS t(s, r) \
             JOIN pg_namespace n ON n.nspname = t.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r \
             WHERE c.relpersistence <> 'p'",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "check table persistence", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(tables
        .iter()
        .cloned()
        .partition(|t| !unlogged.iter().any(|(s, n)| *s == t.schema && *n == t.name)))
}

/// SQL: whether the connected role may add the table `c` (`pg_class`) to a publication.
pub(crate) const MAY_PUBLISH: &str = "pg_has_role(current_user, c.relowner, 'USAGE')";

/// Which of `tables` the connected role may not add to a publication: only a superuser, or a
/// role with the privileges of the table's owner, may (a role that only has `SELECT` on it can
/// copy it but not publish it).
///
/// # Errors
/// [`Error::Sql`].
pub async fn not_publishable(source: &Client, tables: &[QualName]) -> Result<Vec<QualName>> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = source
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text \
                 FROM unnest($1::text[], $2::text[]) AS t(s, r) \
                 JOIN pg_namespace n ON n.nspname = t.s \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r \
                 WHERE NOT {MAY_PUBLISH} ORDER BY 1, 2"
            ),
            &[&schemas, &names],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "check the right to publish the tables", e))?;
    Ok(rows
        .iter()
        .map(|r| QualName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// How to give the source role the right to publish a table, for messages.
pub const PUBLISH_FIX: &str = "only a table's owner may publish it: ALTER TABLE … OWNER TO the \
     source role, GRANT the owner to it, or use a role that owns the tables";

/// The comment of the publication feeding `target`: the target's URL (no password) and, when
/// known, the system identifier of the target's server, which tells two servers reached by the
/// same name (two machines' `localhost`) apart.
pub fn publication_comment(target: &ConnUrl, target_system: Option<&str>) -> String {
    match target_system {
        Some(id) => format!(
            "{PUBLICATION_COMMENT_PREFIX}{} [target system {id}]",
            target.redacted()
        ),
        None => format!("{PUBLICATION_COMMENT_PREFIX}{}", target.redacted()),
    }
}

/// The target system identifier a publication comment records.
fn comment_target_system(comment: &str) -> Option<&str> {
    let at = comment.rfind("[target system ")?;
    comment[at + "[target system ".len()..].strip_suffix(']')
}

/// Refuse when a slot or publication of `names` is still on the source: every leftover this run
/// may take away is gone by now (the sweep, the retired subscription), so what is left belongs
/// to a replication that is not this run's to end.
///
/// # Errors
/// [`Error::Preflight`] naming it and how to drop it; [`Error::Sql`].
pub async fn refuse_existing(source: &Client, names: &SyncNames) -> Result<()> {
    let (slot, publication) = source_objects(source, names).await?;
    if !slot && !publication {
        return Ok(());
    }
    let what = match (slot, publication) {
        (true, true) => format!("replication slot and publication {}", names.slot),
        (true, false) => format!("replication slot {}", names.slot),
        _ => format!("publication {}", names.publication),
    };
    Err(Error::Preflight(format!(
        "the {what} already exists on the source and feeds a replication this run may not end \
         (another server reached by the same name and database, or one in use); if nothing \
         replicates from it, drop it with `postgres-seren-replicator sync --stop` and the \
         --target it was made for, or SELECT pg_drop_replication_slot('{}') and DROP PUBLICATION \
         {} on the source",
        names.slot,
        ident(&names.publication)
    )))
}

/// Create the publication of `tables` on the source. Its comment names the target it feeds
/// ([`publication_comment`]), so that a leftover can be traced.
///
/// # Errors
/// [`Error::Sql`].
pub async fn create_publication(
    source: &Client,
    names: &SyncNames,
    tables: &[QualName],
    comment: &str,
) -> Result<()> {
    // ONLY: without it a table's inheritance children join the publication too, and a child
    // left out for want of a replica identity would then refuse the application's UPDATE and
    // DELETE (through the parent as well as on itself).
    let list: Vec<String> = tables
        .iter()
        .map(|t| format!("ONLY {}.{}", ident(&t.schema), ident(&t.name)))
        .collect();
    let sql = format!(
        "CREATE PUBLICATION {p}{tables}; COMMENT ON PUBLICATION {p} IS {c}",
        p = ident(&names.publication),
        tables = if list.is_empty() {
            String::new()
        } else {
            format!(" FOR TABLE {}", list.join(", "))
        },
        c = literal(comment),
    );
    source.batch_execute(&sql).await.map_err(|e| {
        Error::sql(
            Side::Source,
            format!("create the publication {}", names.publication),
            e,
        )
    })
}

/// Create the slot on a replication connection and return the snapshot it exported (held
/// open) with what the server answered. A slot of the same name must not exist
/// ([`refuse_existing`]).
///
/// # Errors
/// [`Error::Connect`] / [`Error::Sql`].
pub async fn create_slot(
    source_url: &ConnUrl,
    source: &Client,
    names: &SyncNames,
) -> Result<(Snapshot, CreatedSlot)> {
    let _ = source;
    let mut session = ReplicationSession::connect(source_url).await?;
    let created = session.create_logical_slot(&names.slot).await?;
    tracing::info!(slot = %created.slot_name, lsn = %created.consistent_point, "replication slot created");
    let snapshot = Snapshot::held(created.snapshot_name.clone(), session.hold());
    Ok((snapshot, created))
}

/// Drop the slot if it exists, ending a walsender that still uses it.
///
/// # Errors
/// [`Error::Sql`].
pub async fn drop_slot(source: &Client, slot: &str) -> Result<bool> {
    for _ in 0..50 {
        let row = source
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| Error::sql(Side::Source, "look up the replication slot", e))?;
        let Some(row) = row else {
            return Ok(false);
        };
        match row.get::<_, Option<i32>>(0) {
            Some(pid) => {
                source
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| Error::sql(Side::Source, "end the slot's WAL sender", e))?;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            None => {
                match source
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                {
                    Ok(_) => return Ok(true),
                    // Became active again meanwhile (55006): go round.
                    Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {}
                    Err(e) => {
                        return Err(Error::sql(
                            Side::Source,
                            format!("drop the replication slot {slot}"),
                            e,
                        ))
                    }
                }
            }
        }
    }
    Err(Error::SlotBusy(format!(
        "the replication slot {slot} stays in use; stop what uses it and try again"
    )))
}

/// A libpq connection string for the target server to reach the source with.
pub fn subscription_conninfo(source: &ConnUrl) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![
        format!("host={}", quote(&source.host)),
        format!("port={}", source.port),
        format!("user={}", quote(&source.user)),
        format!("dbname={}", quote(&source.dbname)),
    ];
    if source.sslmode != SslMode::Prefer {
        parts.push(format!("sslmode={}", source.sslmode.as_str()));
    }
    if let Some(root) = &source.sslrootcert {
        parts.push(format!(
            "sslrootcert={}",
            quote(&root.display().to_string())
        ));
    }
    if let Some(pw) = &source.password {
        parts.push(format!("password={}", quote(pw.expose())));
    }
    parts.join(" ")
}

/// The warning for a subscription whose connection string holds the source password (the
/// target keeps it in `pg_subscription`), or `None` when `via` has none. Said by `init` and
/// `sync` alike.
pub fn password_warning(via: &ConnUrl) -> Option<String> {
    via.password.is_some().then(|| {
        "the subscription's connection string holds the source password, which the target \
         keeps in pg_subscription (readable by its superusers); prefer a replication role of \
         its own, or (as a superuser on the target, or before 16) --sync-source-url without a \
         password and a pgpass file on the target server"
            .to_owned()
    })
}

/// How [`start`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// The subscription already existed: replication was running.
    AlreadyRunning,
    /// The subscription was created; what the user should know about it.
    Now {
        /// Warnings (one line each).
        warnings: Vec<String>,
    },
}

/// `sync`: start replication into a target whose copy is complete and waits for it, from the
/// slot that copy made, so that no change is lost or applied twice. `via` is how the target
/// server reaches the source. Anything that would leave a gap is refused before anything is
/// made.
///
/// # Errors
/// [`Error::RunInProgress`] while a copy into the target runs (it starts its replication
/// itself); [`Error::ReplicationNotStarted`] when replication cannot start without a gap (no
/// complete copy, the slot invalidated or missing), saying what to run instead; [`Error::Sql`].
pub async fn start(
    source: &Client,
    target: &Client,
    target_url: &ConnUrl,
    names: &SyncNames,
    via: &ConnUrl,
) -> Result<Started> {
    if subscription_exists(target, names).await? {
        return Ok(Started::AlreadyRunning);
    }
    let gap = |why: String| Err(Error::ReplicationNotStarted(why));
    if let Some(pid) = run_in_progress(source, names).await? {
        return Err(Error::RunInProgress(format!(
            "a copy into {} is in progress (source session {pid}): it starts its replication \
             itself when it completes",
            target_url.redacted()
        )));
    }
    let state = crate::init::inspect_target(target_url).await?;
    if state != crate::TargetState::AwaitingReplication {
        return gap(format!(
            "the target {} holds no complete copy waiting for replication ({}), so replication \
             cannot start without a gap: finish an interrupted copy with `init --resume`, or copy \
             again and replicate with `sync --force`",
            target_url.redacted(),
            match state {
                crate::TargetState::Interrupted => "its copy was interrupted",
                crate::TargetState::Missing => "the database does not exist",
                _ => "its copy is not marked complete",
            }
        ));
    }
    if slot_lost(source, names).await? {
        return gap(format!(
            "the replication slot {} was invalidated (the source removed WAL it needed), so \
             replication cannot start without a gap: run `sync --force` to copy again and replicate",
            names.slot
        ));
    }
    let (slot, publication) = source_objects(source, names).await?;
    if !(slot && publication) {
        return gap(format!(
            "the source has no replication slot from a copy into {} (expected {}), so replication \
             cannot start without a gap: run `sync --force` to copy again and replicate from that \
             copy, or `init --drop-existing`",
            target_url.redacted(),
            names.slot
        ));
    }
    let warnings = password_warning(via).into_iter().collect();
    create_subscription(target, names, via).await?;
    Ok(Started::Now { warnings })
}

/// Create the subscription on the target, starting at the slot's consistent point, and drop
/// the copy's bookkeeping in the same transaction: the target then holds either a complete
/// copy waiting for replication (the bookkeeping says so, and `sync` or `init --resume` starts
/// it) or a replicated copy, never something in between.
///
/// # Errors
/// [`Error::Sql`] (the target cannot reach the source, no privilege, …).
pub async fn create_subscription(
    target: &Client,
    names: &SyncNames,
    source: &ConnUrl,
) -> Result<()> {
    let sql = format!(
        "CREATE SUBSCRIPTION {s} CONNECTION {c} PUBLICATION {p} \
         WITH (create_slot = false, slot_name = {slot}, copy_data = false, enabled = true)",
        s = ident(&names.subscription),
        c = literal(&subscription_conninfo(source)),
        p = ident(&names.publication),
        slot = literal(&names.slot),
    );
    // The statement holds the connection string, password included: keep it out of the
    // target's server log, which records a failed statement's text (and every DDL statement
    // under log_statement = ddl). Only a superuser may change these; without the right they
    // stay as the server has them.
    for guard in [
        "SET log_min_error_statement = panic",
        "SET log_statement = none",
    ] {
        let _ = target.batch_execute(guard).await;
    }
    let created = target
        .batch_execute(&format!(
            "BEGIN; {sql}; DROP SCHEMA IF EXISTS {} CASCADE; COMMIT",
            ident(crate::target::BOOKKEEPING_SCHEMA)
        ))
        .await;
    if created.is_err() {
        let _ = target.batch_execute("ROLLBACK").await;
    }
    let _ = target
        .batch_execute("RESET log_min_error_statement; RESET log_statement")
        .await;
    created.map_err(|e| {
        // The error never holds the connection string.
        Error::sql(
            Side::Target,
            format!(
                "create the subscription {} (from the target to the source)",
                names.subscription
            ),
            e,
        )
    })
}

/// Whether the target has our subscription.
///
/// # Errors
/// [`Error::Sql`].
pub async fn subscription_exists(target: &Client, names: &SyncNames) -> Result<bool> {
    Ok(target
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&names.subscription],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "look up the subscription", e))?
        .is_some())
}

/// Whether the source has our slot and publication.
///
/// # Errors
/// [`Error::Sql`].
pub async fn source_objects(source: &Client, names: &SyncNames) -> Result<(bool, bool)> {
    let row = source
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
                    EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2)",
            &[&names.slot, &names.publication],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "look up the slot and publication", e))?;
    Ok((row.get(0), row.get(1)))
}

/// Where a slot's changes start (its confirmed position, which for a slot nothing has read
/// from yet is the consistent point of its snapshot) and how many tables its publication has.
///
/// # Errors
/// [`Error::Sql`], [`Error::Preflight`] when the slot does not exist.
pub async fn slot_origin(source: &Client, names: &SyncNames) -> Result<(String, usize)> {
    let row = source
        .query_opt(
            "SELECT confirmed_flush_lsn::text, \
                    (SELECT count(*) FROM pg_publication_tables WHERE pubname = $2) \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&names.slot, &names.publication],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "read the replication slot", e))?
        .ok_or_else(|| {
            Error::Preflight(format!(
                "the replication slot {} does not exist on the source",
                names.slot
            ))
        })?;
    let lsn: Option<String> = row.get(0);
    Ok((
        lsn.unwrap_or_default(),
        usize::try_from(row.get::<_, i64>(1)).unwrap_or(0),
    ))
}

/// Whether the slot exists but can no longer stream: invalidated because the WAL it needed
/// was removed (`wal_status = 'lost'`, PostgreSQL 13+) or by a recovery conflict (16+). A
/// subscription on it would never receive a change.
///
/// # Errors
/// [`Error::Sql`].
pub async fn slot_lost(source: &Client, names: &SyncNames) -> Result<bool> {
    Ok(source
        .query_opt(
            "SELECT coalesce(to_jsonb(s) ->> 'wal_status', '') = 'lost' \
                    OR coalesce((to_jsonb(s) ->> 'conflicting')::bool, false) \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&names.slot],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "read the replication slot", e))?
        .is_some_and(|r| r.get::<_, bool>(0)))
}

/// What one replication consists of, as `init` started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Slot, publication and subscription names.
    pub names: SyncNames,
    /// Where replication starts: the copy's snapshot saw everything before this LSN.
    pub consistent_point: String,
    /// Tables in the publication.
    pub published_tables: usize,
}

/// Drop our subscription from the target database if it is there (detached from its slot
/// first, so that dropping it does not need to reach the source). Returns whether it was.
///
/// # Errors
/// [`Error::Sql`].
pub async fn drop_subscription(target: &Client, names: &SyncNames) -> Result<bool> {
    if !subscription_exists(target, names).await? {
        return Ok(false);
    }
    let s = ident(&names.subscription);
    target
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {s} DISABLE; ALTER SUBSCRIPTION {s} SET (slot_name = NONE); \
             DROP SUBSCRIPTION {s}"
        ))
        .await
        .map_err(|e| Error::sql(Side::Target, "drop the subscription", e))?;
    Ok(true)
}

/// Drop the subscription (target), then the slot and publication (source); whatever of them
/// exists. Returns what was dropped, for the user.
///
/// # Errors
/// [`Error::Sql`].
pub async fn stop(
    source: &Client,
    target: Option<&Client>,
    names: &SyncNames,
) -> Result<Vec<String>> {
    let mut dropped = Vec::new();
    if let Some(target) = target {
        if drop_subscription(target, names).await? {
            dropped.push(format!("subscription {} (target)", names.subscription));
        }
    }
    dropped.extend(drop_source_objects(source, names).await?);
    Ok(dropped)
}

/// After a copy that did not finish: drop its slot and publication from the source unless a
/// subscription in the target already uses them (a target database that cannot be reached, or
/// does not exist yet, holds none). Returns what was dropped.
///
/// # Errors
/// [`Error::Connect`] / [`Error::Sql`] on the source.
pub async fn abandon(source: &ConnUrl, target: &ConnUrl, names: &SyncNames) -> Result<Vec<String>> {
    let subscribed = match crate::connect::connect(target, Side::Target).await {
        Ok(t) => subscription_exists(&t, names).await.unwrap_or(true),
        Err(_) => false,
    };
    if subscribed {
        return Ok(Vec::new());
    }
    let s = crate::connect::connect(source, Side::Source).await?;
    drop_source_objects(&s, names).await
}

/// How this tool's publications begin their comment; the rest names the target.
pub const PUBLICATION_COMMENT_PREFIX: &str = "postgres-seren-replicator: replication into ";

/// A replication slot of this tool (`seren_…`) that no WAL sender reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InactiveSlot {
    /// Its name.
    pub name: String,
    /// The database it decodes.
    pub database: Option<String>,
    /// WAL the source keeps for it, in bytes.
    pub retained_bytes: i64,
    /// The target its publication says it feeds, when its publication is in this database.
    pub feeds: Option<String>,
}

impl std::fmt::Display for InactiveSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(d) = &self.database {
            write!(f, " (database {d}")?;
        } else {
            write!(f, " (")?;
        }
        write!(f, ", retains {} bytes of WAL", self.retained_bytes)?;
        if let Some(t) = &self.feeds {
            write!(f, ", made for a copy into {t}")?;
        }
        write!(f, ")")
    }
}

/// This tool's replication slots on the source's server that nothing streams from.
///
/// # Errors
/// [`Error::Sql`].
pub async fn inactive_slots(source: &Client) -> Result<Vec<InactiveSlot>> {
    let rows = source
        .query(
            "SELECT s.slot_name::text, s.database::text, \
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::bigint, \
                    substr(obj_description(p.oid, 'pg_publication'), $1) \
             FROM pg_replication_slots s \
             LEFT JOIN pg_publication p ON p.pubname = s.slot_name \
             WHERE s.slot_name LIKE 'seren\\_%' AND NOT s.active ORDER BY 1",
            &[&(PUBLICATION_COMMENT_PREFIX.len() as i32 + 1)],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "list replication slots", e))?;
    Ok(rows
        .iter()
        .map(|r| InactiveSlot {
            name: r.get(0),
            database: r.get(1),
            retained_bytes: r.get(2),
            feeds: r.get::<_, Option<String>>(3).filter(|f| !f.is_empty()),
        })
        .collect())
}

/// The advisory lock that marks a run into one target as in progress: (class, key) for
/// `pg_try_advisory_lock(int4, int4)`, in the source database. A class of our own keeps it
/// apart from an application's one-argument advisory locks.
fn lock_key(names: &SyncNames) -> (i32, i32) {
    const CLASS: i32 = 0x5345_5245; // "SERE"
    let hex = names.slot.trim_start_matches("seren_");
    let key = u32::from_str_radix(hex.get(..8).unwrap_or(hex), 16).unwrap_or(0) & 0x7fff_ffff;
    (CLASS, key as i32)
}

/// A source session holding the run lock of one target: while it lives, sweeps leave that
/// target's slot alone, and a second run into the same target is refused. The server releases
/// it when the session ends, however the process ends (a SIGKILL closes its socket).
#[derive(Debug)]
pub struct RunLock {
    _session: Client,
}

/// The process holding the run lock of `names`, when one does.
///
/// # Errors
/// [`Error::Sql`].
pub async fn run_in_progress(source: &Client, names: &SyncNames) -> Result<Option<i32>> {
    let (class, key) = lock_key(names);
    Ok(source
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2 \
               AND pid <> pg_backend_pid() LIMIT 1",
            &[&class, &key],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "look for a run in progress", e))?
        .map(|r| r.get(0)))
}

/// Take the run lock of `names` on a new source session. With `take_over` (an
/// `application_name` prefix), a lock held by a session whose `application_name` starts with it
/// is taken from it: the caller knows that the runs named so are gone (a remote job's next
/// worker, started after the one before was given up for lost and had ended: the prefix names
/// that job's workers only), but the source may not know yet: a connection from a machine that
/// lost power stays open on the server until its TCP keepalive gives up, two hours by default.
/// The session is ended and the lock taken once it is gone.
///
/// # Errors
/// [`Error::RunInProgress`] when another run into the same target holds it (with `take_over`,
/// one not named by the prefix, or one this role may not end); [`Error::Connect`] /
/// [`Error::Sql`].
pub async fn lock_run(
    source_url: &ConnUrl,
    names: &SyncNames,
    target: &ConnUrl,
    take_over: Option<&str>,
) -> Result<RunLock> {
    let session = crate::connect::connect(source_url, Side::Source).await?;
    let (class, key) = lock_key(names);
    let try_lock = || async {
        session
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &key])
            .await
            .map_err(|e| Error::sql(Side::Source, "take the run lock", e))
            .map(|r| r.get::<_, bool>(0))
    };
    if try_lock().await? {
        return Ok(RunLock { _session: session });
    }
    let holder = run_in_progress(&session, names).await?;
    if let (Some(prefix), Some(pid)) = (take_over.filter(|p| !p.is_empty()), holder) {
        // Ended only when the prefix names it, never this session.
        let ended: Option<bool> = match session
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = $1 AND left(application_name, length($2)) = $2 \
                   AND pid <> pg_backend_pid()",
                &[&pid, &prefix],
            )
            .await
        {
            Ok(row) => row.map(|r| r.get(0)),
            // Not allowed to signal it (another role's session, no pg_signal_backend).
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Some(false),
            Err(e) => return Err(Error::sql(Side::Source, "end the lost run's session", e)),
        };
        if ended == Some(true) {
            for _ in 0..100 {
                if try_lock().await? {
                    tracing::warn!(pid, "took the run lock from the session of a lost run");
                    return Ok(RunLock { _session: session });
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let holder = run_in_progress(&session, names).await?.or(holder);
    Err(Error::RunInProgress(format!(
        "another postgres-seren-replicator run into {} is in progress{}: wait for it to end{}",
        target.redacted(),
        holder.map_or(String::new(), |p| format!(" (source session {p})")),
        holder.map_or(String::new(), |p| format!(
            ", or if its process is gone, end the session with SELECT pg_terminate_backend({p}) on the source"
        )),
    )))
}

/// What a sweep for leftovers did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// What it dropped, one line each (for the user).
    pub dropped: Vec<String>,
    /// What it left and why, with the command that drops it, one line each.
    pub notes: Vec<String>,
}

/// What the target says about our slot.
enum TargetSays {
    /// The slot was made for another server reached by the same name (its publication says so).
    Elsewhere(String),
    /// The target database does not exist.
    Missing,
    /// It holds our subscription: a replication, perhaps disconnected just now.
    Subscribed,
    /// It holds a complete copy waiting for replication from the slot.
    Awaiting,
    /// Nothing uses the slot: an interrupted copy, or none.
    Unused,
    /// It could not be asked.
    Unknown(String),
}

async fn ask_target(target_url: &ConnUrl, names: &SyncNames, made_for: Option<&str>) -> TargetSays {
    let maintenance = match crate::target::connect_maintenance(target_url).await {
        Ok(m) => m,
        Err(e) => return TargetSays::Unknown(e.to_string()),
    };
    if let (Some(was), Some(now)) = (
        made_for,
        crate::target::server_identifier(&maintenance).await,
    ) {
        if was != now {
            return TargetSays::Elsewhere(was.to_owned());
        }
    }
    match crate::target::state(&maintenance, target_url).await {
        Ok(crate::target::TargetState::Missing) => return TargetSays::Missing,
        Ok(crate::target::TargetState::AwaitingReplication) => return TargetSays::Awaiting,
        Ok(_) => {}
        Err(e) => return TargetSays::Unknown(e.to_string()),
    }
    let target = match crate::connect::connect(target_url, Side::Target).await {
        Ok(t) => t,
        Err(e) => return TargetSays::Unknown(e.to_string()),
    };
    match subscription_exists(&target, names).await {
        Ok(true) => TargetSays::Subscribed,
        Ok(false) => TargetSays::Unused,
        Err(e) => TargetSays::Unknown(e.to_string()),
    }
}

/// Find this tool's leftovers on the source: drop the slot and publication an interrupted copy
/// into `target_url` left (inactive, no subscription uses them, no run into that target in
/// progress, and the target holds no complete copy waiting for them), saying so; name every
/// other inactive slot of this tool with the way to drop it. `own_lock`: the caller holds the
/// run lock of this target itself.
///
/// # Errors
/// [`Error::Sql`] on the source.
pub async fn sweep(
    source: &Client,
    target_url: &ConnUrl,
    names: &SyncNames,
    own_lock: bool,
) -> Result<Sweep> {
    let mut out = Sweep::default();
    let slots = inactive_slots(source).await?;
    let (slot_exists, publication_exists) = source_objects(source, names).await?;
    let ours = slots.iter().find(|s| s.name == names.slot);
    let comment: Option<String> = source
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&names.publication],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "read the publication", e))?
        .and_then(|r| r.get(0));
    let made_for = comment.as_deref().and_then(comment_target_system);
    // Our publication without its slot is a leftover too (a run killed between the two).
    if ours.is_some() || (publication_exists && !slot_exists) {
        let busy = if own_lock {
            None
        } else {
            run_in_progress(source, names).await?
        };
        let retained = ours.map(|s| s.retained_bytes);
        match (busy, ask_target(target_url, names, made_for).await) {
            (Some(pid), _) => out.notes.push(format!(
                "a copy into {} is in progress (source session {pid}); its replication slot {} \
                 is left alone",
                target_url.redacted(),
                names.slot
            )),
            (None, TargetSays::Subscribed) => {}
            (None, TargetSays::Elsewhere(id)) => out.notes.push(format!(
                "the inactive replication slot {} on the source was made for a copy into another \
                 server (system {id}) reached as {}: left alone; once nothing replicates from it, \
                 drop it with `sync --stop` from where that server is reached, or SELECT \
                 pg_drop_replication_slot('{}') on the source",
                names.slot,
                target_url.redacted(),
                names.slot
            )),
            (None, TargetSays::Awaiting) => out.notes.push(format!(
                "the replication slot {} holds the source's changes since a complete copy into {}: \
                 run `postgres-seren-replicator sync` to start replication from it, or \
                 `sync --stop` to drop it",
                names.slot,
                target_url.redacted()
            )),
            (None, TargetSays::Unknown(why)) => out.notes.push(format!(
                "the replication slot {} is inactive, but whether {} still needs it could not be \
                 checked ({why}); once nothing uses it, drop it with `postgres-seren-replicator \
                 sync --stop` or SELECT pg_drop_replication_slot('{}') on the source",
                names.slot,
                target_url.redacted(),
                names.slot
            )),
            (None, TargetSays::Missing | TargetSays::Unused) => {
                let what = match retained {
                    Some(b) => format!(
                        "replication slot {} and its publication, left by an interrupted copy \
                         into {} (it kept {b} bytes of WAL on the source)",
                        names.slot,
                        target_url.redacted()
                    ),
                    None => format!(
                        "publication {}, left by an interrupted copy into {}",
                        names.publication,
                        target_url.redacted()
                    ),
                };
                drop_source_objects(source, names).await?;
                out.dropped.push(what);
            }
        }
    }
    for other in slots.iter().filter(|s| s.name != names.slot) {
        let other_names = SyncNames {
            slot: other.name.clone(),
            publication: other.name.clone(),
            subscription: other.name.clone(),
        };
        if run_in_progress(source, &other_names).await?.is_some() {
            continue;
        }
        out.notes.push(format!(
            "inactive replication slot {other} on the source: if nothing replicates from it any \
             more, drop it with `postgres-seren-replicator sync --stop` and that copy's --target, \
             or SELECT pg_drop_replication_slot('{}') on the source",
            other.name
        ));
    }
    Ok(out)
}

/// Drop the slot and publication from the source, whichever exists.
///
/// # Errors
/// [`Error::Sql`].
pub async fn drop_source_objects(source: &Client, names: &SyncNames) -> Result<Vec<String>> {
    let mut dropped = Vec::new();
    if drop_slot(source, &names.slot).await? {
        dropped.push(format!("replication slot {} (source)", names.slot));
    }
    let (_, publication) = source_objects(source, names).await?;
    if publication {
        source
            .batch_execute(&format!("DROP PUBLICATION {}", ident(&names.publication)))
            .await
            .map_err(|e| Error::sql(Side::Source, "drop the publication", e))?;
        dropped.push(format!("publication {} (source)", names.publication));
    }
    Ok(dropped)
}

/// The source side of a replication: its slot's health and how far the target has confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotStatus {
    /// Whether a WAL sender streams from it now.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// Bytes of WAL the slot may still fall behind before it is invalidated (`None`: no limit).
    pub safe_wal_size: Option<i64>,
    /// WAL the source keeps for the slot, in bytes.
    pub retained_bytes: i64,
    /// The source's current LSN.
    pub current_lsn: String,
    /// The LSN the target has confirmed applying.
    pub confirmed_lsn: Option<String>,
    /// Source changes the target has not confirmed, in bytes.
    pub lag_bytes: Option<i64>,
    /// How long ago the newest change the target confirmed was made (`None` when unknown).
    pub lag_seconds: Option<f64>,
}

/// The target side: the subscription and each table's state.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionStatus {
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether its apply worker runs now.
    pub worker_running: bool,
    /// The last LSN it received.
    pub received_lsn: Option<String>,
    /// Each table: name and state (`ready`, `copying`, …).
    pub tables: Vec<(QualName, String)>,
}

/// A replication's state as `status` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStatus {
    /// Names.
    pub names: SyncNames,
    /// The slot, when the source has it.
    pub slot: Option<SlotStatus>,
    /// The subscription, when the target has it.
    pub subscription: Option<SubscriptionStatus>,
}

impl SyncStatus {
    /// One-line warnings about the slot's health, for people.
    pub fn health(&self) -> Vec<String> {
        let mut out = Vec::new();
        match (&self.slot, &self.subscription) {
            (None, None) => out.push("no replication: neither the slot nor the subscription exists".into()),
            (None, Some(_)) => out.push("the subscription has no slot on the source: it cannot receive changes".into()),
            (Some(_), None) => out.push("the slot has no subscription: the source keeps WAL for nothing (run `sync`, or `sync --stop`)".into()),
            _ => {}
        }
        if let Some(slot) = &self.slot {
            match slot.wal_status.as_deref() {
                Some("lost") => out.push("the slot was invalidated: WAL it needed is gone, so replication cannot resume; copy again".into()),
                Some("unreserved") => out.push("the slot is about to be invalidated (past max_slot_wal_keep_size)".into()),
                _ => {}
            }
            if slot.safe_wal_size.is_none() && !slot.active {
                out.push("the slot is inactive and the source sets no max_slot_wal_keep_size: its WAL grows until the subscriber comes back or the disk fills".into());
            }
        }
        if let Some(sub) = &self.subscription {
            if !sub.enabled {
                out.push("the subscription is disabled".into());
            } else if !sub.worker_running {
                out.push(
                    "the subscription's apply worker is not running (see the target's log)".into(),
                );
            }
        }
        out
    }
}

fn substate(code: &str) -> &'static str {
    match code {
        "i" => "initializing",
        "d" => "copying",
        "f" => "copied",
        "s" => "synchronized",
        "r" => "ready",
        _ => "unknown",
    }
}

/// Read both sides of the replication named `names`.
///
/// # Errors
/// [`Error::Sql`].
pub async fn status(source: &Client, target: &Client, names: &SyncNames) -> Result<SyncStatus> {
    let slot = source
        .query_opt(
            // wal_status and safe_wal_size exist from PostgreSQL 13 on (NULL before).
            "SELECT s.active, to_jsonb(s)->>'wal_status', (to_jsonb(s)->>'safe_wal_size')::bigint, \
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::bigint, \
                    pg_current_wal_lsn()::text, s.confirmed_flush_lsn::text, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
                    (SELECT extract(epoch FROM r.replay_lag)::float8 FROM pg_stat_replication r \
                      WHERE r.pid = s.active_pid) \
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&names.slot],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "read the replication slot", e))?
        .map(|r| {
            let lag_bytes: Option<i64> = r.get(6);
            let replay: Option<f64> = r.get(7);
            SlotStatus {
                active: r.get(0),
                wal_status: r.get(1),
                safe_wal_size: r.get(2),
                retained_bytes: r.get(3),
                current_lsn: r.get(4),
                confirmed_lsn: r.get(5),
                lag_bytes,
                // replay_lag is the last measured lag (NULL once idle); caught up means none.
                lag_seconds: if lag_bytes == Some(0) {
                    Some(0.0)
                } else {
                    replay
                },
            }
        });
    // The apply leader: from 16 on, parallel apply workers (streaming = parallel, 18's
    // default) have no relid either, but a leader_pid.
    let sub = target
        .query_opt(
            "SELECT sub.oid, sub.subenabled, st.pid IS NOT NULL, st.received_lsn::text \
             FROM pg_subscription sub \
             LEFT JOIN pg_stat_subscription st ON st.subid = sub.oid AND st.relid IS NULL \
                  AND coalesce(to_jsonb(st)->>'leader_pid', '') = '' \
             WHERE sub.subname = $1 \
               AND sub.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&names.subscription],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "read the subscription", e))?;
    let subscription = match sub {
        None => None,
        Some(r) => {
            let oid: u32 = r.get(0);
            let tables = target
                .query(
                    "SELECT n.nspname::text, c.relname::text, sr.srsubstate::text \
                     FROM pg_subscription_rel sr JOIN pg_class c ON c.oid = sr.srrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE sr.srsubid = $1 ORDER BY 1, 2",
                    &[&oid],
                )
                .await
                .map_err(|e| Error::sql(Side::Target, "read the subscription's tables", e))?
                .iter()
                .map(|t| {
                    let code: String = t.get(2);
                    (
                        QualName::new(t.get::<_, String>(0), t.get::<_, String>(1)),
                        substate(&code).to_owned(),
                    )
                })
                .collect();
            Some(SubscriptionStatus {
                enabled: r.get(1),
                worker_running: r.get(2),
                received_lsn: r.get(3),
                tables,
            })
        }
    };
    Ok(SyncStatus {
        names: names.clone(),
        slot,
        subscription,
    })
}

/// Wait until the target has confirmed everything the source had written when this was called
/// (the point `verify` and `cutover` compare at). Returns the LSN waited for.
///
/// # Errors
/// [`Error::CatchUpTimeout`] when the target does not get there within `timeout`, [`Error::Sql`].
pub async fn wait_caught_up(
    source: &Client,
    names: &SyncNames,
    timeout: std::time::Duration,
) -> Result<String> {
    // The insert position, not pg_current_wal_lsn() (the write position): with
    // synchronous_commit off a commit returns before its WAL is written, and waiting only for the
    // write position could miss it.
    let lsn: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| Error::sql(Side::Source, "read the current LSN", e))?
        .get(0);
    let started = std::time::Instant::now();
    loop {
        let behind: Option<i64> = source
            .query_opt(
                "SELECT pg_wal_lsn_diff($2::text::pg_lsn, confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&names.slot, &lsn],
            )
            .await
            .map_err(|e| Error::sql(Side::Source, "read the replication slot", e))?
            .and_then(|r| r.get(0));
        match behind {
            None => {
                return Err(Error::Preflight(format!(
                    "the replication slot {} does not exist on the source",
                    names.slot
                )))
            }
            Some(b) if b <= 0 => return Ok(lsn),
            Some(b) if started.elapsed() >= timeout => {
                return Err(Error::CatchUpTimeout(format!(
                    "the target is still {b} bytes of WAL behind {lsn} after {} s; check `status` \
                     and try again",
                    timeout.as_secs()
                )))
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_target_and_fit_postgres_limits() {
        let a = ConnUrl::parse("postgresql://u@db1:5432/shop").expect("url");
        let b = ConnUrl::parse("postgresql://u@db2:5432/shop").expect("url");
        let na = SyncNames::for_target(&a);
        assert_eq!(na, SyncNames::for_target(&a));
        assert_ne!(na.slot, SyncNames::for_target(&b).slot);
        assert!(na.slot.len() <= 63);
        assert!(na
            .slot
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }

    #[test]
    fn conninfo_quotes_values_and_keeps_tls_settings() {
        let u =
            ConnUrl::parse("postgresql://app:pa%27ss@src.example:6432/shop?sslmode=verify-full")
                .expect("url");
        let c = subscription_conninfo(&u);
        assert_eq!(
            c,
            "host='src.example' port=6432 user='app' dbname='shop' sslmode=verify-full password='pa\\'ss'"
        );
    }
}

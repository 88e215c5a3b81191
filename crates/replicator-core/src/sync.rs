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

/// What stops the source from feeding a subscription, one line each (empty: nothing).
///
/// # Errors
/// [`Error::Sql`] when the checks themselves fail.
pub async fn source_problems(source: &Client) -> Result<Vec<String>> {
    let row = source
        .query_one(
            "SELECT current_setting('wal_level'), \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                    current_setting('max_replication_slots')::int \
                      - (SELECT count(*) FROM pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int \
                      - (SELECT count(*) FROM pg_stat_replication)::int",
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "check replication settings", e))?;
    let wal_level: String = row.get(0);
    let may_replicate: Option<bool> = row.get(1);
    let free_slots: i32 = row.get(2);
    let free_senders: i32 = row.get(3);
    let mut problems = Vec::new();
    if wal_level != "logical" {
        problems.push(format!(
            "the source's wal_level is {wal_level}, not logical (set wal_level = logical and restart it)"
        ));
    }
    if may_replicate != Some(true) {
        problems.push(
            "the source role has no REPLICATION privilege (ALTER ROLE … REPLICATION, or use a role that has it)"
                .into(),
        );
    }
    if free_slots < 1 {
        problems.push(
            "the source has no free replication slot (raise max_replication_slots or drop an unused slot)"
                .into(),
        );
    }
    if free_senders < 1 {
        problems.push("the source has no free WAL sender (raise max_wal_senders)".into());
    }
    Ok(problems)
}

/// What stops the target from holding a subscription (empty: nothing).
///
/// # Errors
/// [`Error::Sql`] when the check fails.
pub async fn target_problems(target: &Client) -> Result<Vec<String>> {
    let row = target
        .query_one(
            "SELECT rolsuper OR (current_setting('server_version_num')::int >= 160000 \
                    AND pg_has_role(current_user, 'pg_create_subscription', 'MEMBER')), \
                    current_setting('max_logical_replication_workers')::int \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "check subscription privileges", e))?;
    let mut problems = Vec::new();
    if !row.get::<_, bool>(0) {
        problems.push(
            "the target role may not create subscriptions (a superuser, or on PostgreSQL 16+ a member of pg_create_subscription)"
                .into(),
        );
    }
    if row.get::<_, i32>(1) < 1 {
        problems.push("the target has max_logical_replication_workers = 0".into());
    }
    Ok(problems)
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

/// Create the publication of `tables` on the source, replacing one of ours left by an earlier
/// failed run.
///
/// # Errors
/// [`Error::Sql`].
pub async fn create_publication(
    source: &Client,
    names: &SyncNames,
    tables: &[QualName],
) -> Result<()> {
    let list: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", ident(&t.schema), ident(&t.name)))
        .collect();
    let sql = format!(
        "DROP PUBLICATION IF EXISTS {p}; CREATE PUBLICATION {p}{tables}",
        p = ident(&names.publication),
        tables = if list.is_empty() {
            String::new()
        } else {
            format!(" FOR TABLE {}", list.join(", "))
        }
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
/// open) with what the server answered. An inactive slot of ours left by an earlier failed run
/// is dropped first.
///
/// # Errors
/// [`Error::Connect`] / [`Error::Sql`].
pub async fn create_slot(
    source_url: &ConnUrl,
    source: &Client,
    names: &SyncNames,
) -> Result<(Snapshot, CreatedSlot)> {
    drop_slot(source, &names.slot).await?;
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
                    Err(e) if e.code().is_some_and(|c| c.code() == "55006") => {}
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
    Err(Error::Preflight(format!(
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

/// Create the subscription on the target, starting at the slot's consistent point.
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
    let created = target.batch_execute(&sql).await;
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
            "SELECT s.active, s.wal_status::text, s.safe_wal_size, \
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
    let sub = target
        .query_opt(
            "SELECT sub.oid, sub.subenabled, st.pid IS NOT NULL, st.received_lsn::text \
             FROM pg_subscription sub \
             LEFT JOIN pg_stat_subscription st ON st.subid = sub.oid AND st.relid IS NULL \
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
/// [`Error::Preflight`] when the target does not get there within `timeout`, [`Error::Sql`].
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
                return Err(Error::Preflight(format!(
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

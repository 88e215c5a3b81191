//! `cutover`: the switch from source to target while replication runs.
//!
//! 1. wait until the target is less than `max_lag_bytes` behind;
//! 2. make the source read-only for the application's roles (`ALTER ROLE … SET
//!    default_transaction_read_only = on`) and end their sessions, so no write comes after;
//! 3. wait until the target has applied everything the source wrote;
//! 4. copy sequence values (logical replication does not carry them);
//! 5. `verify` (unless skipped); on a difference stop here, with replication still running;
//! 6. drop the subscription, slot and publication.
//!
//! The way back, before the application writes to the target: [`undo`] lets the roles write
//! on the source again (and `init` starts a new copy with replication if it was detached).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::catalog;
use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::{Error, Result, Side};
use crate::sql::{ident, literal};
use crate::sync::{self, SyncNames};
use crate::verify::{self, VerifyOptions, VerifyReport};

/// How to cut over.
#[derive(Debug, Clone)]
pub struct CutoverOptions {
    /// The database replicated from.
    pub source: ConnUrl,
    /// The database replicated into.
    pub target: ConnUrl,
    /// The application's roles on the source, made read-only.
    pub roles: Vec<String>,
    /// Freeze the source only once the target is at most this far behind.
    pub max_lag_bytes: i64,
    /// How long each wait may take.
    pub timeout: Duration,
    /// Print the plan and the current lag; change nothing.
    pub dry_run: bool,
    /// Run `verify` before detaching (on by default).
    pub verify: bool,
    /// Options for that verify.
    pub verify_jobs: usize,
}

impl CutoverOptions {
    /// Defaults: freeze under 16 MiB of lag, 5 minutes per wait, verify.
    pub fn new(source: ConnUrl, target: ConnUrl, roles: Vec<String>) -> Self {
        Self {
            source,
            target,
            roles,
            max_lag_bytes: 16 << 20,
            timeout: Duration::from_secs(300),
            dry_run: false,
            verify: true,
            verify_jobs: 4,
        }
    }
}

/// What a cutover did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct CutoverReport {
    /// What happened, in order, one line each.
    pub steps: Vec<String>,
    /// Sequences whose value was copied.
    pub sequences: usize,
    /// The verify result, when it ran.
    pub verify: Option<VerifyReport>,
    /// Whether replication was detached (the cutover completed).
    pub completed: bool,
}

async fn lag(source: &Client, names: &SyncNames) -> Result<i64> {
    source
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&names.slot],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "read the slot's lag", e))?
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .ok_or_else(|| {
            Error::Preflight(format!(
                "the replication slot {} does not exist on the source: nothing to cut over",
                names.slot
            ))
        })
}

/// Tables the copy filled that replication does not carry (left out of the publication:
/// unlogged, or without a usable replica identity): on both sides, not published. Their
/// changes since the copy are not in the target.
async fn not_replicated(
    source: &Client,
    target: &Client,
    names: &SyncNames,
) -> Result<Vec<String>> {
    let list = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                JOIN pg_namespace n ON n.oid = c.relnamespace \
                WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                  AND n.nspname !~ '^pg_' AND n.nspname <> '_seren_replicator'";
    let on_target: std::collections::HashSet<String> = target
        .query(list, &[])
        .await
        .map_err(|e| Error::sql(Side::Target, "list tables", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows = source
        .query(
            &format!(
                "{list} AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p \
                 WHERE p.pubname = $1 AND p.schemaname = n.nspname AND p.tablename = c.relname) \
                 ORDER BY 1"
            ),
            &[&names.publication],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "list the tables replication leaves out", e))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|t| on_target.contains(t))
        .collect())
}

async fn writable_session(url: &ConnUrl, side: Side) -> Result<Client> {
    let c = connect(url, side).await?;
    // Our own statements must still write after the roles (maybe ours) are frozen.
    c.batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| Error::sql(side, "open a writable session", e))?;
    Ok(c)
}

/// Refuse, before anything is frozen, a role that the source session may not make read-only
/// (`ALTER ROLE … SET`: itself, or with `CREATEROLE` a role that is not a superuser, from 16
/// only with the `ADMIN` option on it) or whose sessions it may not end (its own; with
/// `pg_signal_backend` or the role's privileges those of a role that is not a superuser): a
/// cutover stopped halfway would leave some roles frozen and others writing. A role the source
/// does not have is a usage error.
async fn may_freeze(source: &Client, roles: &[String]) -> Result<()> {
    let rows = source
        .query(
            "SELECT r.rolname::text,
                    me.rolsuper OR r.oid = me.oid
                      OR (me.rolcreaterole AND NOT r.rolsuper
                          AND (current_setting('server_version_num')::int < 160000
                               OR pg_has_role(me.oid, r.oid, 'MEMBER WITH ADMIN OPTION'))),
                    me.rolsuper OR r.oid = me.oid
                      OR (NOT r.rolsuper AND (pg_has_role(me.oid, r.oid, 'USAGE')
                          OR pg_has_role(me.oid, 'pg_signal_backend', 'USAGE')))
             FROM pg_roles r, pg_roles me
             WHERE me.rolname = current_user AND r.rolname = ANY($1)",
            &[&roles],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "check the right to freeze the roles", e))?;
    if let Some(r) = roles
        .iter()
        .find(|r| !rows.iter().any(|row| row.get::<_, String>(0) == **r))
    {
        return Err(Error::Usage(format!(
            "--role {r}: no such role on the source"
        )));
    }
    let mut problems = Vec::new();
    for row in &rows {
        let (role, alter, signal): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        let mut lacks = Vec::new();
        if !alter {
            lacks.push(
                "make it read-only (ALTER ROLE needs CREATEROLE and, from PostgreSQL 16, the \
                 ADMIN option on it)",
            );
        }
        if !signal {
            lacks.push("end its sessions (needs pg_signal_backend or the role's privileges)");
        }
        if !lacks.is_empty() {
            problems.push(format!("{role}: may not {}", lacks.join(" nor ")));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Preflight(format!(
        "the source role may not freeze every --role, so nothing was changed: {}; run cutover \
         as a superuser or as a role with those rights (GRANT pg_signal_backend TO …; GRANT \
         <role> TO … WITH ADMIN OPTION)",
        problems.join("; ")
    )))
}

/// Let `roles` write on the source again (the way back).
///
/// # Errors
/// [`Error::Sql`].
pub async fn undo(source_url: &ConnUrl, roles: &[String]) -> Result<Vec<String>> {
    let source = writable_session(source_url, Side::Source).await?;
    let mut steps = Vec::new();
    for r in roles {
        source
            .batch_execute(&format!(
                "ALTER ROLE {} RESET default_transaction_read_only",
                ident(r)
            ))
            .await
            .map_err(|e| Error::sql(Side::Source, format!("reset role {r}"), e))?;
        steps.push(format!(
            "role {r} may write on the source again (new sessions)"
        ));
    }
    Ok(steps)
}

/// Cut over; see the module documentation. `progress` gets each step as it starts.
///
/// # Errors
/// [`Error::Preflight`] when there is no replication or a role does not exist,
/// [`Error::CatchUpTimeout`] when a wait times out; [`Error::Sql`] / [`Error::Connect`].
pub async fn cutover(
    o: CutoverOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<CutoverReport> {
    if o.roles.is_empty() {
        return Err(Error::Usage(
            "--role is required: name the application's role(s) on the source, which cutover makes read-only".into(),
        ));
    }
    let names = SyncNames::for_target(&o.target);
    let source = writable_session(&o.source, Side::Source).await?;
    let target = writable_session(&o.target, Side::Target).await?;
    if !sync::subscription_exists(&target, &names).await? {
        return Err(Error::Preflight(format!(
            "the target has no subscription {}: nothing to cut over (is replication running? see `status`)",
            names.subscription
        )));
    }
    may_freeze(&source, &o.roles).await?;
    let mut report = CutoverReport::default();
    let step = |s: String, report: &mut CutoverReport| {
        progress(&s);
        report.steps.push(s);
    };

    let left_out = not_replicated(&source, &target, &names).await?;
    if !left_out.is_empty() && !o.verify {
        return Err(Error::Usage(format!(
            "--skip-verify: {} are copied but not replicated, so changes made to them since the \
             copy are not in the target; cut over with verify (it compares them), or copy them \
             again first",
            crate::checks::name_list(&left_out, 10)
        )));
    }
    if !left_out.is_empty() {
        step(
            format!(
                "not replicated, so compared by verify before detaching: {}",
                crate::checks::name_list(&left_out, 10)
            ),
            &mut report,
        );
    }
    let now = lag(&source, &names).await?;
    if o.dry_run {
        for s in [
            format!("the target is {now} bytes behind the source now"),
            format!("would wait until it is under {} bytes", o.max_lag_bytes),
            format!(
                "would make the source read-only for {} (ALTER ROLE … SET default_transaction_read_only = on) and end their sessions",
                o.roles.join(", ")
            ),
            "would wait until the target has applied everything".into(),
            "would copy every sequence's value to the target".into(),
            if o.verify { "would verify every table".into() } else { "would not verify (--skip-verify)".into() },
            format!(
                "would drop subscription {}, slot {} and publication {}",
                names.subscription, names.slot, names.publication
            ),
        ] {
            step(s, &mut report);
        }
        return Ok(report);
    }

    let started = Instant::now();
    let mut current = now;
    while current > o.max_lag_bytes {
        if started.elapsed() > o.timeout {
            return Err(Error::CatchUpTimeout(format!(
                "the target stayed {current} bytes behind for {} s; nothing was changed",
                o.timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        current = lag(&source, &names).await?;
    }
    step(
        format!("the target is {current} bytes behind: freezing the source"),
        &mut report,
    );

    for r in &o.roles {
        source
            .batch_execute(&format!(
                "ALTER ROLE {} SET default_transaction_read_only = on",
                ident(r)
            ))
            .await
            .map_err(|e| Error::sql(Side::Source, format!("make role {r} read-only"), e))?;
        let ended: i64 = source
            .query_one(
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE usename = {} AND pid <> pg_backend_pid()",
                    literal(r)
                ),
                &[],
            )
            .await
            .map_err(|e| Error::sql(Side::Source, format!("end the sessions of {r}"), e))?
            .get(0);
        step(
            format!("role {r} is read-only on the source; {ended} of its sessions ended"),
            &mut report,
        );
    }

    let lsn = sync::wait_caught_up(&source, &names, o.timeout).await?;
    step(
        format!("the target has applied everything up to {lsn}"),
        &mut report,
    );

    let cat = catalog::read(&source).await?;
    report.sequences = crate::init::copy_sequences(&source, &target, cat.sequences.iter()).await?;
    step(
        format!("{} sequence values copied to the target", report.sequences),
        &mut report,
    );

    if o.verify {
        let mut v = VerifyOptions::new(o.source.clone(), o.target.clone());
        v.jobs = o.verify_jobs;
        v.catch_up_timeout = o.timeout;
        let result = verify::verify(v).await?;
        let differing: Vec<String> = result
            .tables
            .iter()
            .filter(|t| !t.equal())
            .map(|t| t.table.to_string())
            .collect();
        report.verify = Some(result);
        if !differing.is_empty() {
            return Err(Error::Preflight(format!(
                "verify found differences in {}: replication is left running and the source \
                 read-only; investigate with `verify`, then run cutover again or `cutover --undo` \
                 to let the application write to the source again",
                differing.join(", ")
            )));
        }
        step("verify: every table equal".into(), &mut report);
    }

    let dropped = sync::stop(&source, Some(&target), &names).await?;
    step(
        format!("replication detached: dropped {}", dropped.join(", ")),
        &mut report,
    );
    report.completed = true;
    Ok(report)
}

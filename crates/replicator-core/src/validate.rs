//! `validate`: everything a copy followed by replication needs, checked before anything
//! changes, each with pass, warn or fail and what to do about it.

use std::path::PathBuf;

use tokio_postgres::Client;

use crate::catalog;
use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::Side;
use crate::schema;
use crate::sync;
use crate::target;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Works, with a caveat.
    Warn,
    /// Will not work as it is.
    Fail,
}

impl Verdict {
    /// `pass`, `warn` or `fail`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short stable name (`source.wal_level`, …).
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do (empty when it passed).
    pub fix: String,
}

/// The checks as `validate --json` prints them and a remote `validate` job records them:
/// `{"ok", "checks": [{"check", "result", "detail", "fix"}]}`; `ok` is false when any failed.
pub fn to_json(checks: &[Check]) -> serde_json::Value {
    let list: Vec<_> = checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "check": c.name,
                "result": c.verdict.name(),
                "detail": c.detail,
                "fix": c.fix,
            })
        })
        .collect();
    serde_json::json!({
        "ok": checks.iter().all(|c| c.verdict != Verdict::Fail),
        "checks": list,
    })
}

fn check(
    name: &'static str,
    verdict: Verdict,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    check(name, Verdict::Pass, detail, "")
}

async fn one<T: tokio_postgres::types::FromSqlOwned>(c: &Client, sql: &str) -> Option<T> {
    c.query_one(sql, &[]).await.ok().map(|r| r.get(0))
}

/// A limit and its use (`sql` returns the setting and the count in use): passes while one is
/// free.
async fn capacity(c: &Client, name: &'static str, sql: &str, what: &str, fix: &str) -> Check {
    let read: Option<(i32, i64)> = c
        .query_one(sql, &[])
        .await
        .ok()
        .map(|r| (r.get(0), r.get(1)));
    match read {
        Some((max, used)) if i64::from(max) > used => {
            pass(name, format!("{used} of {max} {what} in use"))
        }
        Some((max, used)) => check(
            name,
            Verdict::Fail,
            format!("{used} of {max} {what} in use: none free"),
            fix,
        ),
        None => check(name, Verdict::Warn, "could not be read", ""),
    }
}

/// Run every check; never fails itself (an unreachable server is a failed check).
pub async fn validate(
    source: &ConnUrl,
    target: &ConnUrl,
    pg_bindir: Option<PathBuf>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let src = match connect(source, Side::Source).await {
        Ok(c) => {
            out.push(pass(
                "source.connect",
                format!("connected to {}", source.redacted()),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(check(
                "source.connect",
                Verdict::Fail,
                e.to_string(),
                "check the source URL, network path and credentials",
            ));
            None
        }
    };
    let tgt = match target::connect_maintenance(target).await {
        Ok(c) => {
            out.push(pass(
                "target.connect",
                format!("connected to {}", target.redacted()),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(check(
                "target.connect",
                Verdict::Fail,
                e.to_string(),
                "check the target URL, network path and credentials",
            ));
            None
        }
    };
    let Some(src) = src else { return out };

    let source_major = catalog::major_version(&src, Side::Source)
        .await
        .unwrap_or(0);
    // Replication settings.
    let wal_level: String = one(&src, "SELECT current_setting('wal_level')")
        .await
        .unwrap_or_default();
    out.push(if wal_level == "logical" {
        pass("source.wal_level", "wal_level = logical")
    } else {
        check(
            "source.wal_level",
            Verdict::Fail,
            format!("wal_level = {wal_level}: logical replication cannot start"),
            "set wal_level = logical on the source and restart it (on RDS: rds.logical_replication = 1)",
        )
    });
    out.push(
        capacity(
            &src,
            "source.max_replication_slots",
            "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)",
            "slots",
            "raise max_replication_slots (restart) or drop an unused slot",
        )
        .await,
    );
    out.push(
        capacity(
            &src,
            "source.max_wal_senders",
            "SELECT current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)",
            "WAL senders",
            "raise max_wal_senders (restart)",
        )
        .await,
    );
    let replication: Option<bool> = one(
        &src,
        "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .await;
    out.push(if replication == Some(true) {
        pass("source.replication_privilege", "the role may replicate")
    } else {
        check(
            "source.replication_privilege",
            Verdict::Fail,
            "the source role has no REPLICATION privilege",
            "ALTER ROLE <role> REPLICATION (on RDS: GRANT rds_replication TO <role>)",
        )
    });
    let keep: Option<String> = one(
        &src,
        "SELECT current_setting('max_slot_wal_keep_size', true)",
    )
    .await;
    out.push(match keep.as_deref() {
        Some("-1") => check(
            "source.max_slot_wal_keep_size",
            Verdict::Warn,
            "unlimited: a stalled subscription makes the source keep WAL until its disk fills",
            "set max_slot_wal_keep_size, and watch `status`",
        ),
        Some(v) => pass(
            "source.max_slot_wal_keep_size",
            format!("max_slot_wal_keep_size = {v}"),
        ),
        None => pass(
            "source.max_slot_wal_keep_size",
            "not available before PostgreSQL 13",
        ),
    });

    // Tables logical replication cannot update or delete in.
    let no_identity: Vec<String> = src
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') \
               AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                    (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
             ORDER BY 1",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    out.push(if no_identity.is_empty() {
        pass("source.replica_identity", "every table has a primary key or a replica identity")
    } else {
        check(
            "source.replica_identity",
            Verdict::Warn,
            format!(
                "{} table(s) without primary key or replica identity ({}): once published, UPDATE and DELETE on them fail on the source",
                no_identity.len(),
                no_identity.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
            "add a primary key, or ALTER TABLE … REPLICA IDENTITY FULL; verify compares them by a weaker whole-table check",
        )
    });
    let long: Option<i64> = one(
        &src,
        "SELECT count(*) FROM pg_stat_activity WHERE xact_start < now() - interval '5 minutes' AND pid <> pg_backend_pid()",
    )
    .await;
    out.push(match long {
        Some(0) | None => pass("source.long_transactions", "no transaction open for over 5 minutes"),
        Some(n) => check("source.long_transactions", Verdict::Warn, format!("{n} transaction(s) open for over 5 minutes: creating the slot waits for them to end"), "end them, or expect init to wait"),
    });
    let prepared: Option<i64> = one(&src, "SELECT count(*) FROM pg_prepared_xacts").await;
    out.push(match prepared {
        Some(0) | None => pass("source.prepared_transactions", "none"),
        Some(n) => check(
            "source.prepared_transactions",
            Verdict::Warn,
            format!("{n} prepared transaction(s): creating the slot waits for them"),
            "COMMIT PREPARED or ROLLBACK PREPARED them",
        ),
    });

    // Tools.
    match schema::find_tools(pg_bindir.as_deref(), source_major).await {
        Ok(t) => out.push(pass(
            "client.tools",
            format!("pg_dump and psql {} (source {source_major})", t.major),
        )),
        Err(e) => out.push(check(
            "client.tools",
            Verdict::Fail,
            e.to_string(),
            "install PostgreSQL client tools at least as new as the source, or pass --pg-bindir",
        )),
    }

    let Some(tgt) = tgt else { return out };
    let target_major = catalog::major_version(&tgt, Side::Target)
        .await
        .unwrap_or(0);
    out.push(if target_major >= source_major {
        pass(
            "target.version",
            format!("PostgreSQL {target_major} (source {source_major})"),
        )
    } else {
        check(
            "target.version",
            Verdict::Fail,
            format!("PostgreSQL {target_major} is older than the source's {source_major}"),
            "copy into a server at least as new as the source",
        )
    });
    // Extensions.
    out.push(match target::missing_extensions(&src, &tgt).await {
        Ok((needed, missing)) if missing.is_empty() => pass(
            "target.extensions",
            format!("{} extension(s) of the source available", needed.len()),
        ),
        Ok((_, missing)) => check(
            "target.extensions",
            Verdict::Fail,
            format!("not available on the target: {}", missing.join(", ")),
            "install their packages on the target server",
        ),
        Err(e) => check(
            "target.extensions",
            Verdict::Warn,
            format!("could not compare extensions: {e}"),
            "check that both roles may read pg_extension and pg_available_extensions",
        ),
    });
    // Privileges.
    let may_create: Option<bool> = one(
        &tgt,
        "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user",
    )
    .await;
    out.push(if may_create == Some(true) {
        pass(
            "target.create_database",
            "the role may create the target database",
        )
    } else {
        check(
            "target.create_database",
            Verdict::Warn,
            "the target role may not create databases",
            "create the target database beforehand, owned by this role",
        )
    });
    match sync::target_problems(&tgt).await {
        Ok(p) if p.is_empty() => out.push(pass("target.subscription", "the role may create a subscription")),
        Ok(p) => out.push(check("target.subscription", Verdict::Fail, p.join("; "), "use a superuser on the target (or on PostgreSQL 16+ a member of pg_create_subscription), or copy with --no-sync")),
        Err(e) => out.push(check("target.subscription", Verdict::Warn, e.to_string(), "")),
    }
    out.push(check(
        "target.reaches_source",
        Verdict::Warn,
        format!(
            "not testable from here: the target server itself must reach {}:{} for the subscription",
            source.host, source.port
        ),
        "allow the target server's address on the source's firewall and pg_hba.conf (host … replication is not needed; a normal database connection is); pass --sync-source-url when the target reaches the source by another address",
    ));
    out
}

//! `validate`: everything a copy followed by replication needs, checked before anything
//! changes, each with pass, warn or fail and what to do about it. The checks `init` also
//! makes are defined once, in [`crate::checks`]; `validate` reports what a plain `init` (with
//! ownership and privileges, replication when possible) would refuse or warn about.

use std::path::PathBuf;

use crate::catalog;
use crate::checks::{self, one};
use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::Side;
use crate::schema;
use crate::target;

pub use crate::checks::{Check, Verdict};

/// The checks as `validate --json` prints them and a remote `validate` job records them; `ok`
/// is false when any failed.
pub fn to_result(checks: &[Check]) -> job_model::report::ValidateResult {
    job_model::report::ValidateResult {
        version: job_model::report::REPORT_VERSION,
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        checks: checks
            .iter()
            .map(|c| job_model::report::CheckReport {
                check: c.name.to_owned(),
                result: c.verdict.name().to_owned(),
                detail: c.detail.clone(),
                fix: c.fix.clone(),
            })
            .collect(),
    }
}

fn check(
    name: &'static str,
    verdict: Verdict,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check::new(name, verdict, detail, fix)
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check::pass(name, detail)
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
    out.push(checks::source_version(source_major));
    // Replication settings: the same checks init's preflight refuses on.
    let own = crate::sync::SyncNames::for_target(target);
    out.extend(checks::replication(&src, None, Some(&own.slot)).await);
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

    out.push(checks::replica_identity(&src, None).await);
    out.push(checks::publication_rights(&src).await);
    out.push(checks::leftover_slots(&src).await);
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
    let target_major = match &tgt {
        Some(t) => catalog::major_version(t, Side::Target).await.unwrap_or(0),
        None => 0,
    };
    match schema::find_tools(pg_bindir.as_deref(), source_major, target_major).await {
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
    out.push(checks::target_version(source_major, target_major));
    out.push(checks::distinct(&src, &tgt, source, target).await);
    out.push(checks::extensions(&src, &tgt, target_major).await);
    out.push(checks::roles(&src, &tgt, false, false).await);
    // A target database that exists is kept by init (when empty); a missing one is created.
    let existing = match target::state(&tgt, target).await {
        Ok(
            target::TargetState::Empty
            | target::TargetState::Interrupted
            | target::TargetState::AwaitingReplication,
        ) => connect(target, Side::Target).await.ok(),
        _ => None,
    };
    out.push(
        checks::public_schema(&src, &tgt, existing.as_ref(), target_major, false, false)
            .await
            .0,
    );
    out.push(checks::tablespaces(&src, &tgt).await);
    out.push(checks::collation_library(&src, &tgt).await);
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
    out.push(checks::subscription(&tgt, source.password.is_some()).await);
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

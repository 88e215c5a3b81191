//! `sync`, `status`, `verify` and `validate`: the commands around continuous replication. The
//! work is in `replicator-core` (`sync`, `verify`, `validate`); this module parses, prints and
//! picks exit codes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use job_model::report::{CompareMethod, ValidateResult, VerifyResult};
use serde_json::json;

use replicator_core::connect::connect;
use replicator_core::sync::{self, SyncNames, SyncStatus};
use replicator_core::validate::{self, Verdict};
use replicator_core::verify;
use replicator_core::{ConnUrl, Error, Side};

/// The two databases.
#[derive(Debug, Clone, Args)]
pub struct Databases {
    /// Source URL (postgresql://user:password@host:port/dbname?sslmode=…). Prefer the
    /// environment variable: the password stays out of your shell history and process list.
    #[arg(long, env = "SEREN_SOURCE_URL", hide_env_values = true)]
    pub source: String,
    /// Target URL.
    #[arg(long, env = "SEREN_TARGET_URL", hide_env_values = true)]
    pub target: String,
}

/// A URL from the command line, or the engine's error naming which one is wrong.
pub fn parse_url(input: &str, side: Side) -> Result<ConnUrl, Error> {
    ConnUrl::parse(input).map_err(|reason| Error::InvalidUrl { side, reason })
}

impl Databases {
    pub fn parse(&self) -> anyhow::Result<(ConnUrl, ConnUrl)> {
        Ok((
            parse_url(&self.source, Side::Source)?,
            parse_url(&self.target, Side::Target)?,
        ))
    }
}

/// `sync` without --force: start or stop replication for a target that holds a copy.
#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub db: Databases,
    /// Stop replicating: drop the subscription (target), the slot and the publication (source).
    #[arg(long, conflicts_with = "force")]
    pub stop: bool,
    /// Copy again (dropping the target database) and replicate from the new copy's snapshot:
    /// for a target whose copy has no slot to continue from. Takes init's flags.
    #[arg(long)]
    pub force: bool,
    /// The URL the target server uses to reach the source, when not --source (another host
    /// name, a replication role; without a password the target server's pgpass file is used,
    /// which from PostgreSQL 16 only a superuser's subscription may).
    #[arg(long, env = "SEREN_SYNC_SOURCE_URL", hide_env_values = true)]
    pub sync_source_url: Option<String>,
    /// With --force: copy only these relations (init's patterns).
    #[arg(
        long,
        value_delimiter = ',',
        env = "SEREN_INCLUDE_TABLES",
        requires = "force"
    )]
    pub include_tables: Vec<String>,
    /// With --force: leave out these relations.
    #[arg(
        long,
        value_delimiter = ',',
        env = "SEREN_EXCLUDE_TABLES",
        requires = "force"
    )]
    pub exclude_tables: Vec<String>,
    /// With --force: create these tables but copy none of their rows.
    #[arg(
        long,
        value_delimiter = ',',
        env = "SEREN_SCHEMA_ONLY_TABLES",
        requires = "force"
    )]
    pub schema_only_tables: Vec<String>,
    /// With --force: connection pairs copying in parallel (default: the number of cores).
    #[arg(long, short = 'j', requires = "force")]
    pub jobs: Option<usize>,
    /// With --force: directory holding pg_dump and psql (default: SEREN_PG_BINDIR, else the
    /// newest found).
    #[arg(long, requires = "force")]
    pub pg_bindir: Option<PathBuf>,
    /// With --force: do not ask before dropping the target database.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: Databases,
    /// Repeat every this many seconds until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// Print JSON (one object per line with --watch).
    #[arg(long)]
    pub json: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub db: Databases,
    /// Compare only these tables (init's patterns).
    #[arg(long, value_delimiter = ',', env = "SEREN_INCLUDE_TABLES")]
    pub include_tables: Vec<String>,
    /// Leave out these tables.
    #[arg(long, value_delimiter = ',', env = "SEREN_EXCLUDE_TABLES")]
    pub exclude_tables: Vec<String>,
    /// Tables whose rows were not copied (skipped here).
    #[arg(long, value_delimiter = ',', env = "SEREN_SCHEMA_ONLY_TABLES")]
    pub schema_only_tables: Vec<String>,
    /// Tables compared in parallel (one connection to each side per table).
    #[arg(long, short = 'j', default_value_t = 4)]
    pub jobs: usize,
    /// Rows per compared key range.
    #[arg(long, default_value_t = 100_000)]
    pub chunk_rows: u64,
    /// While replication runs: seconds to wait for the target to catch up.
    #[arg(long, default_value_t = 120)]
    pub catch_up_timeout_secs: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Run the comparison on a worker of the control plane at SEREN_REMOTE_API instead of here
    /// (for databases this machine cannot reach, or to keep the reads next to them).
    #[arg(long)]
    pub remote: bool,
    #[command(flatten)]
    pub remote_args: crate::remote::RemoteArgs,
    /// With --remote: submit, print the job id and return without waiting.
    #[arg(long, requires = "remote")]
    pub detach: bool,
}

impl VerifyArgs {
    /// The comparison as a job describes it: the one conversion from flags that a local run and
    /// a remote job share.
    pub fn spec(&self) -> anyhow::Result<job_model::JobSpec> {
        Ok(job_model::JobSpec {
            command: job_model::Command::Verify,
            filter: job_model::FilterSpec {
                include_tables: self.include_tables.clone(),
                exclude_tables: self.exclude_tables.clone(),
                schema_only_tables: self.schema_only_tables.clone(),
                table_filters: Vec::new(),
            },
            options: job_model::Options {
                jobs: Some(u32::try_from(self.jobs).unwrap_or(u32::MAX)),
                chunk_rows: Some(self.chunk_rows),
                catch_up_timeout_seconds: Some(self.catch_up_timeout_secs),
                ..job_model::Options::default()
            },
        })
    }
}

/// The `pg_dump` directory of a local run: the flag, else `SEREN_PG_BINDIR`.
pub fn local_bindir(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("SEREN_PG_BINDIR").map(PathBuf::from))
}

/// `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub db: Databases,
    /// Directory holding pg_dump and psql (default: SEREN_PG_BINDIR, else the newest found).
    /// Local runs only: a remote worker uses its own client tools.
    #[arg(long)]
    pub pg_bindir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Run the checks on a worker of the control plane at SEREN_REMOTE_API, from where a remote
    /// copy would run (its network, its pg_dump), instead of here.
    #[arg(long)]
    pub remote: bool,
    #[command(flatten)]
    pub remote_args: crate::remote::RemoteArgs,
    /// With --remote: submit, print the job id and return without waiting.
    #[arg(long, requires = "remote")]
    pub detach: bool,
}

/// `cutover`.
#[derive(Debug, Args)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub db: Databases,
    /// The application's role on the source, made read-only (repeat or comma-separate).
    #[arg(long = "role", value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// Freeze the source only once the target is at most this many bytes behind.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_lag_bytes: i64,
    /// Seconds each wait may take (for the lag to drop, for the last changes to apply).
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Print the plan and the current lag; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Detach without verifying first.
    #[arg(long)]
    pub skip_verify: bool,
    /// The way back: let the roles write on the source again.
    #[arg(long, conflicts_with_all = ["dry_run", "skip_verify"])]
    pub undo: bool,
}

/// `cutover` (and `cutover --undo`).
pub async fn cutover_cmd(args: &CutoverArgs) -> anyhow::Result<()> {
    use replicator_core::cutover::{self, CutoverOptions};
    let (source, target) = args.db.parse()?;
    if args.undo {
        for s in cutover::undo(&source, &args.roles).await? {
            eprintln!("{s}");
        }
        return Ok(());
    }
    let mut opts = CutoverOptions::new(source, target, args.roles.clone());
    opts.max_lag_bytes = args.max_lag_bytes;
    opts.timeout = Duration::from_secs(args.timeout_secs);
    opts.dry_run = args.dry_run;
    opts.verify = !args.skip_verify;
    let report = cutover::cutover(opts, &|s: &str| eprintln!("{s}")).await?;
    if report.completed {
        eprintln!(
            "cutover complete: point the application at the target. The source stays read-only \
             for {} until `cutover --undo`.",
            args.roles.join(", ")
        );
    } else {
        eprintln!("dry run: nothing was changed");
    }
    Ok(())
}

/// Drop what an interrupted copy into `target_url` left on the source, and name the other
/// leftovers, one `note:` line each on standard error.
async fn sweep(
    source: &replicator_core::connect::Client,
    target_url: &ConnUrl,
    names: &SyncNames,
) -> anyhow::Result<()> {
    let found = sync::sweep(source, target_url, names, false).await?;
    for d in &found.dropped {
        eprintln!("dropped the {d}");
    }
    for n in &found.notes {
        eprintln!("note: {n}");
    }
    Ok(())
}

/// `sync` (start from init's slot) and `sync --stop`.
pub async fn sync_cmd(args: &SyncArgs) -> anyhow::Result<()> {
    let (source_url, target_url) = args.db.parse()?;
    let names = SyncNames::for_target(&target_url);
    let source = connect(&source_url, Side::Source).await?;
    let target = connect(&target_url, Side::Target).await?;
    if !args.stop {
        sweep(&source, &target_url, &names).await?;
    }
    if args.stop {
        let dropped = sync::stop(&source, Some(&target), &names).await?;
        if args.json {
            println!("{}", json!({ "stopped": true, "dropped": dropped }));
        } else if dropped.is_empty() {
            eprintln!("no replication into {} to stop", target_url.redacted());
        } else {
            eprintln!("stopped replication: dropped {}", dropped.join(", "));
        }
        return Ok(());
    }
    let via = match &args.sync_source_url {
        Some(u) => parse_url(u, Side::Source)?,
        None => source_url.clone(),
    };
    match sync::start(&source, &target, &target_url, &names, &via).await? {
        sync::Started::AlreadyRunning if args.json => println!(
            "{}",
            json!({ "started": false, "already_running": true, "subscription": names.subscription })
        ),
        sync::Started::AlreadyRunning => eprintln!(
            "already replicating into {} (subscription {}); `status` shows the lag",
            target_url.redacted(),
            names.subscription
        ),
        sync::Started::Now { warnings } => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            if args.json {
                println!(
                    "{}",
                    json!({ "started": true, "subscription": names.subscription, "slot": names.slot })
                );
            } else {
                eprintln!(
                    "replicating: subscription {} on the target follows slot {} from where the \
                     copy ended",
                    names.subscription, names.slot
                );
            }
        }
    }
    Ok(())
}

fn status_json(s: &SyncStatus) -> serde_json::Value {
    json!({
        "slot_name": s.names.slot,
        "subscription_name": s.names.subscription,
        "slot": s.slot.as_ref().map(|x| json!({
            "active": x.active,
            "wal_status": x.wal_status,
            "safe_wal_size": x.safe_wal_size,
            "retained_bytes": x.retained_bytes,
            "current_lsn": x.current_lsn,
            "confirmed_lsn": x.confirmed_lsn,
            "lag_bytes": x.lag_bytes,
            "lag_seconds": x.lag_seconds,
        })),
        "subscription": s.subscription.as_ref().map(|x| json!({
            "enabled": x.enabled,
            "worker_running": x.worker_running,
            "received_lsn": x.received_lsn,
            "tables": x.tables.iter().map(|(t, st)| json!({"table": t.to_string(), "state": st})).collect::<Vec<_>>(),
        })),
        "warnings": s.health(),
    })
}

fn print_status(s: &SyncStatus) {
    match &s.slot {
        Some(x) => {
            let lag = x
                .lag_bytes
                .map_or("unknown".to_owned(), |b| format!("{b} bytes"));
            let secs = x
                .lag_seconds
                .map_or("unknown".to_owned(), |v| format!("{v:.1} s"));
            eprintln!(
                "source slot {}: {}, lag {lag} ({secs}), WAL retained {} bytes, wal_status {}{}",
                s.names.slot,
                if x.active { "streaming" } else { "inactive" },
                x.retained_bytes,
                x.wal_status.as_deref().unwrap_or("-"),
                x.safe_wal_size.map_or(String::new(), |v| format!(
                    ", {v} bytes before invalidation"
                )),
            );
        }
        None => eprintln!("source slot {}: none", s.names.slot),
    }
    match &s.subscription {
        Some(x) => {
            let ready = x.tables.iter().filter(|(_, st)| st == "ready").count();
            eprintln!(
                "target subscription {}: {}, {} of {} tables ready",
                s.names.subscription,
                if !x.enabled {
                    "disabled"
                } else if x.worker_running {
                    "applying"
                } else {
                    "enabled, worker not running"
                },
                ready,
                x.tables.len()
            );
            for (t, st) in x.tables.iter().filter(|(_, st)| st != "ready") {
                eprintln!("  {t}: {st}");
            }
        }
        None => eprintln!("target subscription {}: none", s.names.subscription),
    }
    for w in s.health() {
        eprintln!("warning: {w}");
    }
}

/// `status` (once, or every --watch seconds).
pub async fn status_cmd(args: &StatusArgs) -> anyhow::Result<()> {
    let (source_url, target_url) = args.db.parse()?;
    let names = SyncNames::for_target(&target_url);
    let source = connect(&source_url, Side::Source).await?;
    let target = connect(&target_url, Side::Target).await?;
    // What it drops or names goes to standard error, so --json stays one object per line.
    sweep(&source, &target_url, &names).await?;
    loop {
        let s = sync::status(&source, &target, &names).await?;
        if args.json {
            let others = sync::inactive_slots(&source).await?;
            let mut v = status_json(&s);
            v["inactive_slots"] = others
                .iter()
                .filter(|o| o.name != names.slot)
                .map(|o| {
                    json!({
                        "slot_name": o.name,
                        "database": o.database,
                        "retained_bytes": o.retained_bytes,
                        "made_for": o.feeds,
                    })
                })
                .collect();
            println!("{v}");
        } else {
            print_status(&s);
        }
        match args.watch {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
            None => {
                if s.slot.is_none() && s.subscription.is_none() {
                    bail!("no replication into {}", target_url.redacted());
                }
                return Ok(());
            }
        }
    }
}

/// `verify`: exits non-zero when anything differs.
pub async fn verify_cmd(args: &VerifyArgs) -> anyhow::Result<()> {
    let (source, target) = args.db.parse()?;
    let opts = replicator_core::spec::verify_options(source, target, &args.spec()?)?;
    let report = verify::verify(opts).await?;
    print_verify(&report.to_result(), args.json)
}

/// Print a verify report (made here or by a remote worker) as JSON or as one line per table; an
/// error when any table differs.
pub fn print_verify(report: &VerifyResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        for t in &report.tables {
            let name = &t.table;
            if t.missing_on_target {
                eprintln!("{name}: missing on the target");
                continue;
            }
            let how = match (t.method, t.ranges) {
                (CompareMethod::WholeTable, _) => {
                    "whole table, no primary key: count and hash sum only".to_owned()
                }
                (CompareMethod::KeyRanges, 1) => "1 key range".to_owned(),
                (CompareMethod::KeyRanges, n) => format!("{n} key ranges"),
            };
            if t.equal {
                eprintln!("{name}: equal, {} rows ({how})", t.source_rows);
            } else {
                eprintln!(
                    "{name}: DIFFERENT, {} rows on the source, {} on the target ({how})",
                    t.source_rows, t.target_rows
                );
                for m in &t.mismatches {
                    eprintln!("  {}", m.description);
                }
                if t.mismatches_not_listed > 0 {
                    eprintln!("  … and {} more differing ranges", t.mismatches_not_listed);
                }
            }
        }
        match &report.compared_at_lsn {
            Some(lsn) => {
                eprintln!("compared once the target had replicated the source up to {lsn}")
            }
            None => eprintln!("compared without replication running"),
        }
        // A remote report too large for its job record leaves tables out.
        if report.equal_tables_not_listed > 0 {
            eprintln!(
                "{} more tables equal (not listed: the report was too large for the job record)",
                report.equal_tables_not_listed
            );
        }
        if report.differing_tables_not_listed > 0 {
            eprintln!(
                "{} more tables DIFFERENT (not listed: the report was too large for the job \
                 record)",
                report.differing_tables_not_listed
            );
        }
    }
    let (differing, total) = (report.differing_tables(), report.total_tables());
    if differing > 0 {
        bail!("{differing} of {total} tables differ between source and target");
    }
    if !json {
        eprintln!("all {total} tables equal");
    }
    Ok(())
}

/// `validate`: exits non-zero when a check fails.
pub async fn validate_cmd(args: &ValidateArgs) -> anyhow::Result<()> {
    let (source, target) = args.db.parse()?;
    let checks = validate::validate(&source, &target, local_bindir(args.pg_bindir.clone())).await;
    print_validate(&validate::to_result(&checks), args.json)
}

/// Print validate's checks (made here or by a remote worker) as JSON or one line per check with
/// its fix; an error when any check failed.
pub fn print_validate(report: &ValidateResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        for c in &report.checks {
            let fix = if c.fix.is_empty() || c.result == Verdict::Pass.name() {
                String::new()
            } else {
                format!(" -> {}", c.fix)
            };
            eprintln!("{:<4} {:<32} {}{fix}", c.result, c.check, c.detail);
        }
    }
    let failed = report.failed();
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify_report(v: serde_json::Value) -> VerifyResult {
        serde_json::from_value(v).expect("a verify report")
    }

    #[test]
    fn trimmed_remote_reports_still_count_every_table() {
        let differing = json!({"table": "public.b", "method": "key_ranges", "equal": false,
                               "source_rows": 2, "target_rows": 1, "ranges": 1,
                               "mismatches": [], "mismatches_not_listed": 40});
        let trimmed = verify_report(
            json!({"equal": false, "compared_at_lsn": null, "equal_tables_not_listed": 5,
                   "tables": [differing]}),
        );
        let err = print_verify(&trimmed, true).expect_err("a table differs");
        assert_eq!(
            err.to_string(),
            "1 of 6 tables differ between source and target"
        );
        let cut = verify_report(
            json!({"equal": false, "compared_at_lsn": null, "differing_tables_not_listed": 3,
                   "tables": [differing]}),
        );
        let err = print_verify(&cut, true).expect_err("tables differ");
        assert_eq!(
            err.to_string(),
            "4 of 4 tables differ between source and target"
        );
        let fine = verify_report(json!({"equal": true, "compared_at_lsn": null, "tables": [
            {"table": "public.a", "method": "key_ranges", "equal": true, "source_rows": 1,
             "target_rows": 1, "ranges": 1}]}));
        assert!(print_verify(&fine, true).is_ok());
    }

    #[test]
    fn a_failed_check_fails_validate() {
        let report: ValidateResult = serde_json::from_value(json!({"ok": false, "checks": [
            {"check": "source.wal_level", "result": "fail", "detail": "replica", "fix": "set it"},
            {"check": "target.version", "result": "pass", "detail": "15", "fix": ""}]}))
        .expect("a validate report");
        let err = print_validate(&report, true).expect_err("fails");
        assert_eq!(err.to_string(), "1 check(s) failed: source.wal_level");
    }
}

//! `sync`, `status`, `verify` and `validate`: the commands around continuous replication. The
//! work is in `replicator-core` (`sync`, `verify`, `validate`); this module parses, prints and
//! picks exit codes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::json;

use replicator_core::connect::connect;
use replicator_core::sync::{self, SyncNames, SyncStatus};
use replicator_core::validate::{self, Verdict};
use replicator_core::verify::{self, Method, VerifyOptions};
use replicator_core::{ConnUrl, Error, Filter, Side};

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
    /// name, a replication role; without a password the target server's pgpass file is used).
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
}

/// `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub db: Databases,
    /// Directory holding pg_dump and psql (default: the newest found).
    #[arg(long, env = "SEREN_PG_BINDIR")]
    pub pg_bindir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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

/// `sync` (start from init's slot) and `sync --stop`.
pub async fn sync_cmd(args: &SyncArgs) -> anyhow::Result<()> {
    let (source_url, target_url) = args.db.parse()?;
    let names = SyncNames::for_target(&target_url);
    let source = connect(&source_url, Side::Source).await?;
    let target = connect(&target_url, Side::Target).await?;
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
    if sync::subscription_exists(&target, &names).await? {
        if args.json {
            println!(
                "{}",
                json!({ "started": false, "already_running": true, "subscription": names.subscription })
            );
        } else {
            eprintln!(
                "already replicating into {} (subscription {}); `status` shows the lag",
                target_url.redacted(),
                names.subscription
            );
        }
        return Ok(());
    }
    let (slot, publication) = sync::source_objects(&source, &names).await?;
    if !(slot && publication) {
        bail!(
            "the source has no replication slot from a copy into {} (expected {}), so replication \
             cannot start without a gap: run `sync --force` to copy again and replicate from that \
             copy, or `init --drop-existing`",
            target_url.redacted(),
            names.slot
        );
    }
    let via = match &args.sync_source_url {
        Some(u) => parse_url(u, Side::Source)?,
        None => source_url.clone(),
    };
    if via.password.is_some() {
        eprintln!(
            "warning: the subscription's connection string holds the source password, which the \
             target keeps in pg_subscription; prefer --sync-source-url with a replication role or \
             without a password (and a pgpass file on the target server)"
        );
    }
    sync::create_subscription(&target, &names, &via).await?;
    if args.json {
        println!(
            "{}",
            json!({ "started": true, "subscription": names.subscription, "slot": names.slot })
        );
    } else {
        eprintln!(
            "replicating: subscription {} on the target follows slot {} from where the copy ended",
            names.subscription, names.slot
        );
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
    loop {
        let s = sync::status(&source, &target, &names).await?;
        if args.json {
            println!("{}", status_json(&s));
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
    let mut opts = VerifyOptions::new(source, target);
    opts.filter = Filter::from_args(
        &args.include_tables,
        &args.exclude_tables,
        &args.schema_only_tables,
        &[],
    )?;
    opts.jobs = args.jobs;
    opts.chunk_rows = args.chunk_rows;
    opts.catch_up_timeout = Duration::from_secs(args.catch_up_timeout_secs);
    let report = verify::verify(opts).await?;
    let differing = report.tables.iter().filter(|t| !t.equal()).count();
    if args.json {
        let tables: Vec<_> = report
            .tables
            .iter()
            .map(|t| {
                json!({
                    "table": t.table.to_string(),
                    "method": match t.method { Method::KeyRanges => "key_ranges", Method::WholeTable => "whole_table" },
                    "equal": t.equal(),
                    "source_rows": t.source_rows,
                    "target_rows": t.target_rows,
                    "ranges": t.ranges,
                    "missing_on_target": t.missing_on_target,
                    "mismatches": t.mismatches.iter().map(|m| json!({
                        "key": m.key,
                        "after": m.after,
                        "up_to": m.up_to,
                        "source_rows": m.source_rows,
                        "target_rows": m.target_rows,
                        "description": m.to_string(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "equal": report.equal(), "compared_at_lsn": report.compared_at_lsn, "tables": tables })
        );
    } else {
        for t in &report.tables {
            if t.missing_on_target {
                eprintln!("{}: missing on the target", t.table);
                continue;
            }
            let how = match t.method {
                Method::KeyRanges => format!("{} key ranges", t.ranges),
                Method::WholeTable => "whole table, no primary key: count and hash sum only".into(),
            };
            if t.equal() {
                eprintln!("{}: equal, {} rows ({how})", t.table, t.source_rows);
            } else {
                eprintln!(
                    "{}: DIFFERENT, {} rows on the source, {} on the target ({how})",
                    t.table, t.source_rows, t.target_rows
                );
                for m in &t.mismatches {
                    eprintln!("  {m}");
                }
            }
        }
        match &report.compared_at_lsn {
            Some(lsn) => {
                eprintln!("compared once the target had replicated the source up to {lsn}")
            }
            None => eprintln!("compared without replication running"),
        }
    }
    if differing > 0 {
        bail!(
            "{differing} of {} tables differ between source and target",
            report.tables.len()
        );
    }
    if !args.json {
        eprintln!("all {} tables equal", report.tables.len());
    }
    Ok(())
}

/// `validate`: exits non-zero when a check fails.
pub async fn validate_cmd(args: &ValidateArgs) -> anyhow::Result<()> {
    let (source, target) = args.db.parse()?;
    let checks = validate::validate(&source, &target, args.pg_bindir.clone()).await;
    if args.json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| json!({"check": c.name, "result": c.verdict.name(), "detail": c.detail, "fix": c.fix}))
            .collect();
        println!(
            "{}",
            json!({ "ok": checks.iter().all(|c| c.verdict != Verdict::Fail), "checks": list })
        );
    } else {
        for c in &checks {
            let fix = if c.fix.is_empty() || c.verdict == Verdict::Pass {
                String::new()
            } else {
                format!(" -> {}", c.fix)
            };
            eprintln!("{:<4} {:<32} {}{fix}", c.verdict.name(), c.name, c.detail);
        }
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| c.name)
        .collect();
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

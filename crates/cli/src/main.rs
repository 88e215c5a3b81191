//! `postgres-seren-replicator`: the command line. Parses flags (every one also readable from the
//! environment), builds the engine's options, draws progress, and maps errors to exit codes.
//! All the work happens in `replicator-core`.

mod progress;
mod remote;
mod replication;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use job_model::RemoteUrlError;
use replicator_core::sync::SyncMode;
use replicator_core::{ConnUrl, Error, InitOptions, Side, TargetState};

/// Copy a live PostgreSQL database to another server, exactly and fast.
#[derive(Debug, Parser)]
#[command(
    name = "postgres-seren-replicator",
    version,
    about,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log verbosity (error, warn, info, debug, trace); RUST_LOG takes precedence.
    #[arg(long, global = true, env = "SEREN_LOG", default_value = "warn")]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy the source database into the target database under one consistent snapshot:
    /// schema, rows, indexes and constraints, sequences, large objects, then ANALYZE.
    /// With --remote the copy runs on a worker started by the control plane.
    Init(Box<InitArgs>),
    /// Start replication into a target that holds a copy (from the slot its init left), stop
    /// it (--stop), or copy again and replicate (--force).
    Sync(Box<replication::SyncArgs>),
    /// Replication's state: the source slot's lag and health, the target subscription's tables.
    Status(replication::StatusArgs),
    /// Compare source and target row by row (counts and checksums over primary-key ranges);
    /// exits non-zero when anything differs.
    Verify(replication::VerifyArgs),
    /// Check everything a copy with replication needs, each with pass, warn or fail and the fix;
    /// exits non-zero when a check fails.
    Validate(replication::ValidateArgs),
    /// Switch to the target: wait for low lag, make the source read-only for the application's
    /// roles, wait for zero lag, copy sequences, verify, detach replication (--dry-run shows the
    /// plan; --undo is the way back).
    Cutover(replication::CutoverArgs),
    /// Remote jobs: list, show, watch or cancel them.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        #[command(flatten)]
        remote: remote::RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Your jobs, newest first.
    List {
        /// Only jobs in this status (pending, provisioning, running, completed, failed,
        /// cancelled, timed_out).
        #[arg(long)]
        status: Option<job_model::JobStatus>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job: status, progress, error.
    Show {
        /// The job id.
        job_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it ends; exits 0 only when it completed.
    Watch {
        /// The job id.
        job_id: String,
    },
    /// Ask a job to stop.
    Cancel {
        /// The job id.
        job_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    /// Bars on a terminal, log lines otherwise.
    Auto,
    /// Always bars.
    Bars,
    /// A progress line every few seconds.
    Log,
    /// Only the final summary.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CopyFormat {
    /// Binary where every column type supports it, text otherwise.
    Auto,
    /// Always text (slower; for types whose binary form differs between servers).
    Text,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Source URL, postgresql://user:password@host:port/dbname?sslmode=…  Prefer the environment
    /// variable so the password stays out of your shell history and process list.
    #[arg(long, env = "SEREN_SOURCE_URL", hide_env_values = true)]
    source: String,
    /// Target URL; its database is created when missing.
    #[arg(long, env = "SEREN_TARGET_URL", hide_env_values = true)]
    target: String,
    /// Connection pairs copying in parallel (default: the number of cores).
    #[arg(long, short = 'j', env = "SEREN_JOBS")]
    jobs: Option<usize>,
    /// Copy only these relations: comma-separated schema.table patterns, `*` and `?` wildcards;
    /// a pattern without a schema matches any schema.
    #[arg(long, value_delimiter = ',', env = "SEREN_INCLUDE_TABLES")]
    include_tables: Vec<String>,
    /// Leave out these relations (same patterns); applies to tables, views, sequences.
    #[arg(long, value_delimiter = ',', env = "SEREN_EXCLUDE_TABLES")]
    exclude_tables: Vec<String>,
    /// Create these tables but copy none of their rows (same patterns).
    #[arg(long, value_delimiter = ',', env = "SEREN_SCHEMA_ONLY_TABLES")]
    schema_only_tables: Vec<String>,
    /// Copy only the rows of a table that satisfy a predicate: 'schema.table:SQL predicate'.
    /// Repeat for several tables.
    #[arg(long = "table-filter")]
    table_filters: Vec<String>,
    /// Drop and recreate a target database that already holds objects.
    #[arg(long)]
    drop_existing: bool,
    /// Do not ask before dropping a non-empty target (needed without a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Finish an interrupted run in the same target, under a new snapshot: the tables it had
    /// finished are compared with the source and what changed since is copied again, so the
    /// copy holds one moment of the source and replication starts from it without a gap.
    #[arg(long)]
    resume: bool,
    /// Split tables larger than this (heap + TOAST) into ctid block ranges copied in parallel;
    /// tables over 64 MB whose copy and index builds are the run's longest path are also split
    /// --jobs ways. 0 never splits. Units: B, kB, MB, GB, TB. [default: the planner decides:
    /// only the run's longest table, only as many ways as the servers load at once]
    #[arg(long, value_parser = parse_size)]
    split_tables_larger_than: Option<u64>,
    /// At most this many ranges per split table. [default: 64]
    #[arg(long)]
    max_parts: Option<u64>,
    /// COPY format. [default: auto]
    #[arg(long, value_enum)]
    copy_format: Option<CopyFormat>,
    /// Do not restore object ownership (for targets without the source's roles).
    #[arg(long)]
    no_owner: bool,
    /// Do not restore privileges (GRANT/REVOKE).
    #[arg(long)]
    no_privileges: bool,
    /// Directory holding pg_dump and psql (default: SEREN_PG_BINDIR, else the newest found).
    /// Local runs only: a remote worker uses its own client tools.
    #[arg(long)]
    pg_bindir: Option<PathBuf>,
    /// maintenance_work_mem for index builds on the target, per connection. [default: 256MB]
    #[arg(long)]
    maintenance_work_mem: Option<String>,
    /// Attempts per table or index after a transient error (lost connection, deadlock).
    /// [default: 3]
    #[arg(long)]
    retries: Option<u32>,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Run the copy on a worker of the control plane at SEREN_REMOTE_API instead of here.
    #[arg(long)]
    remote: bool,
    #[command(flatten)]
    remote_args: remote::RemoteArgs,
    /// With --remote: the worker's EC2 instance type (default: chosen by the source's size).
    #[arg(long, requires = "remote")]
    instance_type: Option<String>,
    /// With --remote: stop the job (timed_out) after this many seconds (default 24 h).
    #[arg(long, requires = "remote")]
    timeout_secs: Option<u64>,
    /// With --remote: workers the job may use in all (1-10, default 3). When its worker is
    /// lost (instance failure, spot reclaim, kill), another is started and resumes the copy
    /// where it stopped; 1 fails the job instead.
    #[arg(long, requires = "remote")]
    max_attempts: Option<u32>,
    /// With --remote: submit, print the job id and return without waiting.
    #[arg(long, requires = "remote")]
    detach: bool,
    /// With --remote: start nothing; show the worker the job would get (instance type, spot
    /// or on-demand), the source's size, and the estimated duration and cost (--json: as JSON).
    #[arg(long, requires = "remote", conflicts_with = "detach")]
    dry_run: bool,
    /// With --remote: print the final job record as JSON on standard output.
    #[arg(long, requires = "remote")]
    json: bool,
    /// Require replication after the copy: refuse to start when the source or target cannot
    /// (by default it follows the copy when both allow it, and is skipped with a warning
    /// otherwise).
    #[arg(long, conflicts_with = "no_sync")]
    sync: bool,
    /// Copy only: no publication, slot or subscription.
    #[arg(long)]
    no_sync: bool,
    /// The URL the target server uses to reach the source for replication, when not --source
    /// (another address, a replication role; without a password the target server's own
    /// pgpass file is used, which from PostgreSQL 16 only a superuser's subscription may).
    #[arg(long, env = "SEREN_SYNC_SOURCE_URL", hide_env_values = true)]
    sync_source_url: Option<String>,
    /// Whether `sync_source_url` came from the command line (not the environment): set from
    /// clap's value source after parsing, see [`parse_cli`].
    #[arg(skip)]
    sync_source_url_on_command_line: bool,
}

/// `1GB` → bytes. Plain numbers are bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 512MB or 2GB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("'{s}': unknown unit (use B, kB, MB, GB or TB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

impl InitArgs {
    /// What this run is asked to do, as a job describes it: the one conversion from flags that
    /// both a local run and a remote job start from, so every flag means the same on both.
    fn spec(&self) -> anyhow::Result<job_model::JobSpec> {
        Ok(job_model::JobSpec {
            command: job_model::Command::Init,
            filter: job_model::FilterSpec {
                include_tables: self.include_tables.clone(),
                exclude_tables: self.exclude_tables.clone(),
                table_filters: self.table_filters.clone(),
                schema_only_tables: self.schema_only_tables.clone(),
            },
            options: job_model::Options {
                jobs: self.jobs.map(count).transpose()?,
                drop_existing: self.drop_existing,
                no_owner: self.no_owner,
                no_privileges: self.no_privileges,
                copy_format: self.copy_format.map(|f| match f {
                    CopyFormat::Auto => job_model::CopyFormat::Auto,
                    CopyFormat::Text => job_model::CopyFormat::Text,
                }),
                split_tables_larger_than_bytes: self.split_tables_larger_than,
                max_parts: self.max_parts,
                retries: self.retries,
                maintenance_work_mem: self.maintenance_work_mem.clone(),
                sync: Some(if self.sync {
                    job_model::SyncChoice::Required
                } else if self.no_sync {
                    job_model::SyncChoice::Off
                } else {
                    job_model::SyncChoice::Auto
                }),
                ..job_model::Options::default()
            },
        })
    }
}

/// `--jobs` for the wire (a u32).
fn count(j: usize) -> anyhow::Result<u32> {
    u32::try_from(j).map_err(|_| anyhow::anyhow!("--jobs {j} is too many; give 1 to 256"))
}

/// Whether `flag` was given on the command line (rather than its value coming from the
/// environment variable clap falls back to).
/// Parse the command line, and record where the values that can come from either the command
/// line or the environment came from (clap's value source), for the commands that treat the
/// two differently.
fn parse_cli() -> Cli {
    use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Init(args), Some(("init", m))) = (&mut cli.command, matches.subcommand()) {
        args.sync_source_url_on_command_line =
            m.value_source("sync_source_url") == Some(ValueSource::CommandLine);
    }
    cli
}

/// Refuse `--pg-bindir` for a job a worker runs, and say so when SEREN_PG_BINDIR is set.
fn no_bindir_remotely(flag: Option<&PathBuf>) -> anyhow::Result<()> {
    if flag.is_some() {
        bail!(
            "--pg-bindir names a directory on this machine; a remote worker uses its own client \
             tools (pg_dump of the newest major it has): leave it out, or run locally"
        );
    }
    if std::env::var_os("SEREN_PG_BINDIR").is_some() {
        eprintln!(
            "note: SEREN_PG_BINDIR is a directory on this machine and does not apply to remote \
             jobs: the worker uses its own client tools"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // One thread drives every connection: the work is I/O and the servers do the heavy lifting.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A local copy stops on Ctrl-C (run_local_init cleans up after it); a remote watch handles
    // Ctrl-C itself (it detaches); the other commands just end.
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<remote::Detached>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            if let Some(Interrupted { signal, .. }) = e.downcast_ref::<Interrupted>() {
                eprintln!("{e}");
                return ExitCode::from(match signal {
                    Signal::Interrupt => 130,
                    Signal::Terminate => 143,
                });
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) if args.remote => remote_init(*args).await,
        Command::Init(args) => init(*args).await,
        Command::Sync(args) if args.force => sync_force(*args).await,
        Command::Sync(args) => replication::sync_cmd(&args).await,
        Command::Status(args) => replication::status_cmd(&args).await,
        Command::Verify(args) if args.remote => remote_verify(args).await,
        Command::Verify(args) => replication::verify_cmd(&args).await,
        Command::Validate(args) if args.remote => remote_validate(args).await,
        Command::Validate(args) => replication::validate_cmd(&args).await,
        Command::Cutover(args) => replication::cutover_cmd(&args).await,
        Command::Jobs { command, remote } => jobs(command, &remote).await,
    }
}

async fn remote_init(args: InitArgs) -> anyhow::Result<()> {
    let api = args.remote_args.api()?;
    if args.resume {
        bail!("--resume is for local runs; a remote job that failed midway is rerun with --drop-existing");
    }
    if args.sync_source_url_on_command_line {
        bail!("--sync-source-url is for local runs: the target server of a remote job reaches the source at the source URL; leave it out, or run locally");
    }
    if args.sync_source_url.is_some() {
        eprintln!(
            "note: SEREN_SYNC_SOURCE_URL is for local runs and not used: the target server of \
             a remote job reaches the source at the source URL"
        );
    }
    no_bindir_remotely(args.pg_bindir.as_ref())?;
    let (source, target) = remote_urls(&args.source, &args.target)?;
    let spec = args.spec()?;
    // The same checks the worker's conversion makes, so a bad value fails before submitting.
    replicator_core::spec::init_options(source.clone(), target.clone(), &spec)?;
    if args.drop_existing && !args.yes && !args.dry_run {
        bail!("--drop-existing with --remote needs --yes: the worker cannot ask you to confirm");
    }
    let request = job_model::api::SubmitRequest {
        command: spec.command,
        source_url: args.source.clone(),
        target_url: args.target.clone(),
        options: job_model::Options {
            instance_type: args.instance_type.clone(),
            source_size_bytes: replicator_core::catalog::database_size(
                &source,
                std::time::Duration::from_secs(5),
            )
            .await,
            timeout_seconds: args.timeout_secs,
            max_attempts: args.max_attempts,
            ..spec.options
        },
        filter: spec.filter,
    };
    if args.dry_run {
        // No password leaves this machine for an estimate: the URLs go without them.
        let request = job_model::api::SubmitRequest {
            source_url: source.redacted(),
            target_url: target.redacted(),
            ..request
        };
        let answer = api.estimate(&request).await.map_err(|e| {
            if e.to_string().contains("not_found") {
                anyhow::anyhow!("this control plane has no estimates (POST /estimates): it is older than this CLI; update the deployment, or leave out --dry-run")
            } else {
                e
            }
        })?;
        drop(request);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            eprintln!(
                "dry run, nothing submitted: the estimate for copying {} into {}",
                source.redacted(),
                target.redacted()
            );
            for line in remote::estimate_lines(&answer.estimate) {
                println!("{line}");
            }
        }
        return Ok(());
    }
    let what = format!("copying {} into {}", source.redacted(), target.redacted());
    let Some(id) = submit(&api, request, &what, args.detach).await? else {
        return Ok(());
    };
    finish_watch(&api, &id, args.json, args.progress).await
}

/// Both URLs of a remote job, checked here as the coordinator will, so a typo fails before
/// anything is sent.
fn remote_urls(source: &str, target: &str) -> anyhow::Result<(ConnUrl, ConnUrl)> {
    let check = |text: &str, side: Side| {
        ConnUrl::parse_for_worker(text).map_err(|e| Error::InvalidUrl {
            side,
            reason: match (side, e) {
                (Side::Source, RemoteUrlError::Invalid(reason)) => format!(
                    "{reason} (remote jobs take everything from the URL, not from PG* variables)"
                ),
                (_, e) => e.to_string(),
            },
        })
    };
    Ok((check(source, Side::Source)?, check(target, Side::Target)?))
}

/// Submit with a fresh idempotency key (so the client's own retries make one job) and say so;
/// the job id to watch, or `None` when detaching (the id is printed on standard output).
async fn submit(
    api: &remote::Api,
    request: job_model::api::SubmitRequest,
    what: &str,
    detach: bool,
) -> anyhow::Result<Option<String>> {
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let submitted = api.submit(&request, &idempotency_key).await?;
    let command = request.command;
    drop(request);
    eprintln!(
        "submitted {command} job {} ({}): {what}",
        submitted.job_id, submitted.status,
    );
    if detach {
        println!("{}", submitted.job_id);
        return Ok(None);
    }
    Ok(Some(submitted.job_id))
}

/// `verify --remote`: the comparison runs on a worker; its report is printed as a local run
/// prints it, with the same exit code.
async fn remote_verify(args: replication::VerifyArgs) -> anyhow::Result<()> {
    let api = args.remote_args.api()?;
    let (source, target) = remote_urls(&args.db.source, &args.db.target)?;
    let spec = args.spec()?;
    replicator_core::spec::verify_options(source.clone(), target.clone(), &spec)?;
    let request = job_model::api::SubmitRequest {
        command: spec.command,
        source_url: args.db.source.clone(),
        target_url: args.db.target.clone(),
        options: spec.options,
        filter: spec.filter,
    };
    let what = format!("comparing {} with {}", source.redacted(), target.redacted());
    let Some(id) = submit(&api, request, &what, args.detach).await? else {
        return Ok(());
    };
    finish_watch(&api, &id, args.json, ProgressMode::Auto).await
}

/// `validate --remote`: the checks run on a worker, from where the copy would run.
async fn remote_validate(args: replication::ValidateArgs) -> anyhow::Result<()> {
    let api = args.remote_args.api()?;
    no_bindir_remotely(args.pg_bindir.as_ref())?;
    let (source, target) = remote_urls(&args.db.source, &args.db.target)?;
    let request = job_model::api::SubmitRequest {
        command: job_model::Command::Validate,
        source_url: args.db.source.clone(),
        target_url: args.db.target.clone(),
        options: job_model::Options::default(),
        filter: job_model::FilterSpec::default(),
    };
    let what = format!(
        "checking {} and {} from a worker",
        source.redacted(),
        target.redacted()
    );
    let Some(id) = submit(&api, request, &what, args.detach).await? else {
        return Ok(());
    };
    finish_watch(&api, &id, args.json, ProgressMode::Auto).await
}

fn progress_mode(p: ProgressMode) -> progress::Mode {
    match p {
        ProgressMode::Auto if std::io::stderr().is_terminal() => progress::Mode::Bars,
        ProgressMode::Auto | ProgressMode::Log => progress::Mode::Log,
        ProgressMode::Bars => progress::Mode::Bars,
        ProgressMode::None => progress::Mode::Quiet,
    }
}

async fn finish_watch(
    api: &remote::Api,
    id: &str,
    json: bool,
    mode: ProgressMode,
) -> anyhow::Result<()> {
    let ui = progress::Ui::new(progress_mode(mode));
    let watched = remote::watch(
        api,
        id,
        std::time::Duration::from_secs(2),
        &ui.observer(),
        &|line| ui.note(line),
    )
    .await;
    ui.finish();
    match watched? {
        remote::Watched::Detached(id) => Err(anyhow::Error::new(remote::Detached(id))),
        remote::Watched::Finished(j) => conclude(&j, json),
    }
}

/// Report a finished job and pick the exit: a verify or validate job prints its report as the
/// local command would (`--json`: the report itself); any other prints its status line (`--json`:
/// the job record). Only `completed` exits 0.
fn conclude(j: &job_model::api::JobView, json: bool) -> anyhow::Result<()> {
    use job_model::report::JobResult;
    use job_model::Command as C;
    match (&j.result, j.command) {
        (Some(JobResult::Verify(report)), C::Verify) => replication::print_verify(report, json),
        (Some(JobResult::Validate(report)), C::Validate) => {
            replication::print_validate(report, json)
        }
        (Some(JobResult::Init(report)), C::Init) if j.status == job_model::JobStatus::Completed => {
            if json {
                println!("{}", serde_json::to_string_pretty(j)?);
            }
            eprintln!("{}", remote::status_line(j));
            if let Some(sync) = &report.replication {
                eprintln!("{}", progress::replicating_line(sync));
            }
            Ok(())
        }
        _ => {
            if json {
                println!("{}", serde_json::to_string_pretty(j)?);
            }
            if j.status == job_model::JobStatus::Completed {
                eprintln!("{}", remote::status_line(j));
                Ok(())
            } else {
                Err(remote::failure(j))
            }
        }
    }
}

async fn jobs(command: JobsCommand, remote: &remote::RemoteArgs) -> anyhow::Result<()> {
    let api = remote.api()?;
    match command {
        JobsCommand::List {
            status,
            limit,
            json,
        } => {
            let page = api.list(status, limit.clamp(1, 100), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                println!(
                    "{:<36}  {:<12}  {:<8}  {:<24}  TARGET",
                    "JOB", "STATUS", "COMMAND", "CREATED"
                );
                for j in &page.jobs {
                    println!(
                        "{:<36}  {:<12}  {:<8}  {:<24}  {}",
                        j.job_id, j.status, j.command, j.created_at, j.target_display
                    );
                }
            }
            Ok(())
        }
        JobsCommand::Show { job_id, json } => {
            let j = api.job(&job_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!("{}", remote::status_line(&j));
                println!("source  {}", j.source_display);
                println!("target  {}", j.target_display);
                println!("created {}", j.created_at);
                if let Some(t) = j.started_at {
                    println!("started {t}");
                }
                if let Some(t) = j.finished_at {
                    println!("ended   {t}");
                }
                match &j.usage {
                    Some(u) => {
                        for line in remote::usage_lines(u) {
                            println!("{line}");
                        }
                    }
                    None => {
                        if let Some(i) = &j.instance_id {
                            println!("worker  {i}");
                        }
                    }
                }
                for w in j.progress.iter().flat_map(|p| &p.warnings) {
                    println!("warning: {w}");
                }
            }
            Ok(())
        }
        JobsCommand::Watch { job_id } => {
            finish_watch(&api, &job_id, false, ProgressMode::Auto).await
        }
        JobsCommand::Cancel { job_id, json } => {
            let j = api.cancel(&job_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!("{}", remote::status_line(&j));
            }
            Ok(())
        }
    }
}

async fn init(args: InitArgs) -> anyhow::Result<()> {
    let source = replication::parse_url(&args.source, Side::Source)?;
    let target = replication::parse_url(&args.target, Side::Target)?;
    let spec = args.spec()?;
    let mut opts = replicator_core::spec::init_options(source, target, &spec)?;
    // What only a local run has.
    opts.resume = args.resume;
    opts.pg_bindir = replication::local_bindir(args.pg_bindir);
    opts.sync_source = args
        .sync_source_url
        .as_deref()
        .map(|u| replication::parse_url(u, Side::Source))
        .transpose()?;
    run_local_init(opts, args.yes, args.progress).await
}

/// `sync --force`: stop any replication into the target, copy again into a new database and
/// replicate from that copy's snapshot.
async fn sync_force(args: replication::SyncArgs) -> anyhow::Result<()> {
    let (source, target) = args.db.parse()?;
    let spec = job_model::JobSpec {
        command: job_model::Command::Init,
        filter: job_model::FilterSpec {
            include_tables: args.include_tables.clone(),
            exclude_tables: args.exclude_tables.clone(),
            schema_only_tables: args.schema_only_tables.clone(),
            table_filters: Vec::new(),
        },
        options: job_model::Options {
            jobs: args.jobs.map(count).transpose()?,
            drop_existing: true,
            ..job_model::Options::default()
        },
    };
    let mut opts = replicator_core::spec::init_options(source, target, &spec)?;
    opts.sync = SyncMode::Required;
    opts.pg_bindir = replication::local_bindir(args.pg_bindir);
    opts.sync_source = args
        .sync_source_url
        .as_deref()
        .map(|u| replication::parse_url(u, Side::Source))
        .transpose()?;
    run_local_init(opts, args.yes, ProgressMode::Auto).await
}

async fn run_local_init(
    opts: InitOptions,
    yes: bool,
    progress: ProgressMode,
) -> anyhow::Result<()> {
    if opts.drop_existing && !yes {
        confirm_drop(&opts.target).await?;
    }

    let ui = progress::Ui::new(progress_mode(progress));
    eprintln!(
        "copying {} into {}",
        opts.source.redacted(),
        opts.target.redacted()
    );
    // SIGINT (Ctrl-C) and SIGTERM (systemd, Kubernetes, CI timeouts) stop the copy alike: the
    // engine drops the slot and publication it made, and a target it created before any row
    // moved.
    let signal = std::sync::Arc::new(std::sync::OnceLock::new());
    let stop = stop_signal(signal.clone());
    let target = opts.target.clone();
    let result = replicator_core::init_until(opts, ui.observer(), stop).await;
    ui.finish();
    let report = match result {
        Err(Error::Cancelled) => {
            let kept = matches!(
                replicator_core::inspect_target(&target).await,
                Ok(TargetState::Interrupted | TargetState::AwaitingReplication)
            );
            return Err(anyhow::Error::new(Interrupted {
                signal: signal.get().copied().unwrap_or(Signal::Interrupt),
                kept,
            }));
        }
        other => other?,
    };
    progress::print_summary(&report);
    Ok(())
}

/// The signal that stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// A local copy stopped by a signal; `kept`: the target holds what it finished, for
/// `--resume`.
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted ({}): {}",
    match .signal { Signal::Interrupt => "SIGINT", Signal::Terminate => "SIGTERM" },
    if *.kept {
        "finished tables are kept in the target; run the same command with --resume to \
         finish, or --drop-existing to start over"
    } else {
        "nothing had been copied yet and nothing is left behind; run the same command again"
    }
)]
struct Interrupted {
    signal: Signal,
    kept: bool,
}

/// Resolves at the first SIGINT or SIGTERM, noting which in `seen`.
async fn stop_signal(seen: std::sync::Arc<std::sync::OnceLock<Signal>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        let _ = seen.set(Signal::Interrupt);
        return;
    };
    let which = tokio::select! {
        _ = tokio::signal::ctrl_c() => Signal::Interrupt,
        _ = term.recv() => Signal::Terminate,
    };
    let _ = seen.set(which);
}

async fn confirm_drop(target: &ConnUrl) -> anyhow::Result<()> {
    let state = replicator_core::inspect_target(target).await?;
    let what = match state {
        TargetState::Missing | TargetState::Empty => return Ok(()),
        TargetState::NonEmpty(n) => format!("holds {n} objects"),
        TargetState::Interrupted => "holds an interrupted copy".to_owned(),
        TargetState::AwaitingReplication => {
            "holds a complete copy waiting for its replication to start".to_owned()
        }
    };
    if !std::io::stdin().is_terminal() {
        bail!(
            "the target database {} {what}; --drop-existing would drop it: add --yes to confirm \
             without a terminal",
            target.dbname
        );
    }
    eprint!(
        "The target database {} at {} {what}. Drop it and copy anew? [y/N] ",
        target.dbname,
        target.redacted()
    );
    std::io::stderr().flush().ok();
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("read the answer")?
    .context("read the answer")?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed: the target was left as it is")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

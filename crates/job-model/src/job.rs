//! A job and the parts it is made of.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::status::JobStatus;

/// A point in time, written as RFC 3339 UTC with milliseconds (`2026-11-27T22:07:22.123Z`).
///
/// The fixed width makes the text sort like the time, which the `created_at` sort key of the
/// listing index relies on. Any RFC 3339 text is accepted when reading.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// The current time, truncated to milliseconds so that it survives a round trip.
    pub fn now() -> Self {
        Self::from_unix_millis(now_millis())
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_unix_millis(ms: i64) -> Self {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self(t)
    }

    /// Seconds since the Unix epoch.
    pub fn unix_seconds(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        i64::try_from(self.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// This time plus `d`.
    pub fn plus(self, d: Duration) -> Self {
        Self::from_unix_millis(
            self.unix_millis()
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: Self) -> Duration {
        let ms = self.unix_millis().saturating_sub(earlier.unix_millis());
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Parse RFC 3339.
    ///
    /// # Errors
    /// When the text is not RFC 3339.
    pub fn parse(s: &str) -> Result<Self, String> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| Self(t.to_offset(time::UtcOffset::UTC)))
            .map_err(|e| format!("'{s}' is not an RFC 3339 time: {e}"))
    }

    /// The stored spelling.
    pub fn to_rfc3339(self) -> String {
        let t = self.0;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

fn now_millis() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Who a job belongs to: derived from the API key that submitted it, never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Owner(pub String);

impl Owner {
    /// The owner of jobs submitted with `api_key`: `key-` and the first 16 hex digits of the
    /// key's SHA-256. A job is visible only to the key that made it.
    pub fn of_api_key(api_key: &str) -> Self {
        let digest = Sha256::digest(api_key.as_bytes());
        Self(format!("key-{}", &hex::encode(digest)[..16]))
    }

    /// The stored spelling.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Copy the source database into the target.
    Init,
    /// Keep the target in step with the source by logical replication.
    Sync,
    /// Compare the two databases.
    Verify,
    /// Run the preflight checks.
    Validate,
}

impl Command {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::Sync => "sync",
            Self::Verify => "verify",
            Self::Validate => "validate",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Init, Self::Sync, Self::Verify, Self::Validate]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tables a job touches; the same meaning as the CLI flags of the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSpec {
    /// `--include-tables`: copy only tables matching these `schema.table` globs.
    pub include_tables: Vec<String>,
    /// `--exclude-tables`: never copy tables matching these globs.
    pub exclude_tables: Vec<String>,
    /// `--table-filter`: `schema.table:SQL predicate` entries.
    pub table_filters: Vec<String>,
    /// `--schema-only-tables`: create these tables but copy no rows.
    pub schema_only_tables: Vec<String>,
}

impl FilterSpec {
    /// Whether the filter selects everything.
    pub fn is_empty(&self) -> bool {
        self.include_tables.is_empty()
            && self.exclude_tables.is_empty()
            && self.table_filters.is_empty()
            && self.schema_only_tables.is_empty()
    }
}

/// How a job runs. Every field is optional; absent means the engine's or the coordinator's
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Connection pairs working the copy (default: the worker's cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u32>,
    /// Replace a non-empty target database.
    #[serde(skip_serializing_if = "is_false")]
    pub drop_existing: bool,
    /// `pg_dump --no-owner`.
    #[serde(skip_serializing_if = "is_false")]
    pub no_owner: bool,
    /// `pg_dump --no-privileges`.
    #[serde(skip_serializing_if = "is_false")]
    pub no_privileges: bool,
    /// EC2 instance type for the worker; chosen from `source_size_bytes` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// The source database's size as the client measured it, for choosing the instance type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_size_bytes: Option<u64>,
    /// Stop the job (status `timed_out`) after this many seconds of running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// `verify`: rows per compared key range (default 100,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_rows: Option<u64>,
    /// `verify`: seconds to wait for replication to catch up before comparing (default 120).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_timeout_seconds: Option<u64>,
    /// `init`: the COPY format (default `auto`: binary where every column allows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_format: Option<CopyFormat>,
    /// `init`: split tables larger than this many bytes (heap + TOAST) into block ranges copied
    /// in parallel; 0 never splits (default 1 GiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_tables_larger_than_bytes: Option<u64>,
    /// `init`: at most this many ranges per split table (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parts: Option<u64>,
    /// `init`: attempts per table or index after a transient error (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// `init`: `maintenance_work_mem` of each index-building session on the target, in
    /// PostgreSQL's memory units (`256MB`, the default; `1GB`; a bare number is kB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_work_mem: Option<String>,
    /// `init`: replication after the copy (default `off`: copy only). The worker creates the
    /// slot with the copy's snapshot and, after the copy, the subscription on the target, which
    /// the target server then runs by itself: the worker goes away as after a copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncChoice>,
    /// Workers the job may use in all ([`DEFAULT_MAX_ATTEMPTS`] when absent, at most
    /// [`MAX_ATTEMPTS_LIMIT`]): when a worker is lost (its instance failed, was reclaimed or
    /// killed) before this many have run, another is started and resumes the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// Workers a job may use in all when `max_attempts` is not given.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The most `max_attempts` may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;

impl Options {
    /// The workers this job may use in all.
    pub fn attempts_allowed(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1)
    }
}

/// Whether an `init` job replicates after its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncChoice {
    /// Copy only.
    Off,
    /// Replicate when the source and target allow it; otherwise copy only and say why in the
    /// job's warnings (what a local `init` does without a flag).
    Auto,
    /// Replicate, or refuse before anything is made.
    Required,
}

/// `init`'s COPY format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFormat {
    /// Binary where every column's type supports it, text otherwise.
    Auto,
    /// Always text (slower; for types whose binary form differs between servers).
    Text,
}

/// The most connection pairs a job may use.
pub const MAX_JOBS: u32 = 256;
/// The most ranges a split table may be cut into.
pub const MAX_PARTS: u64 = 10_000;
/// The most attempts after a transient error.
pub const MAX_RETRIES: u32 = 100;

/// An option that is out of range or does not apply to the command: `field` is its name in
/// [`Options`], `problem` says what is wrong with it and what to give instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionProblem {
    /// The field of [`Options`].
    pub field: String,
    /// What is wrong and what to do, to follow the field's name.
    pub problem: String,
}

impl OptionProblem {
    /// The same problem named by the command-line flag that sets the option.
    pub fn as_flag(&self) -> String {
        format!("--{} {}", flag_of(&self.field), self.problem)
    }
}

/// The command-line flag that sets an [`Options`] field.
pub fn flag_of(field: &str) -> String {
    match field {
        "split_tables_larger_than_bytes" => "split-tables-larger-than".into(),
        "timeout_seconds" => "timeout-secs".into(),
        "catch_up_timeout_seconds" => "catch-up-timeout-secs".into(),
        other => other.replace('_', "-"),
    }
}

impl fmt::Display for OptionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "options.{} {}", self.field, self.problem)
    }
}

impl Options {
    /// The fields that are set, by name: those the wire form carries (every field is left out
    /// of it when unset), so a new field cannot be missed here.
    fn set_fields(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m.into_iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        }
    }

    /// Check every value's range and that each set option means something to `command`: an
    /// option a command would not use is refused rather than ignored.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check(&self, command: Command) -> Result<(), OptionProblem> {
        let bad = |field: &str, problem: String| {
            Err(OptionProblem {
                field: field.to_owned(),
                problem,
            })
        };
        // Where the job runs and for how long apply to every command a worker runs.
        let everywhere = [
            "instance_type",
            "source_size_bytes",
            "timeout_seconds",
            "max_attempts",
        ];
        let applies: &[&str] = match command {
            Command::Init => &[
                "jobs",
                "drop_existing",
                "no_owner",
                "no_privileges",
                "copy_format",
                "split_tables_larger_than_bytes",
                "max_parts",
                "retries",
                "maintenance_work_mem",
                "sync",
            ],
            Command::Verify => &["jobs", "chunk_rows", "catch_up_timeout_seconds"],
            Command::Sync | Command::Validate => &[],
        };
        if let Some(field) = self
            .set_fields()
            .into_iter()
            .find(|f| !everywhere.contains(&f.as_str()) && !applies.contains(&f.as_str()))
        {
            return bad(&field, format!("does not apply to {command}; leave it out"));
        }
        if let Some(a) = self.max_attempts {
            if !(1..=MAX_ATTEMPTS_LIMIT).contains(&a) {
                return bad(
                    "max_attempts",
                    format!("is {a}; give 1 (no second worker) to {MAX_ATTEMPTS_LIMIT}"),
                );
            }
        }
        if let Some(j) = self.jobs {
            if !(1..=MAX_JOBS).contains(&j) {
                return bad(
                    "jobs",
                    format!("is {j}; give 1 to {MAX_JOBS} connection pairs"),
                );
            }
        }
        if let Some(c) = self.chunk_rows {
            if !(1..=100_000_000).contains(&c) {
                return bad(
                    "chunk_rows",
                    format!("is {c}; give 1 to 100000000 rows per compared range"),
                );
            }
        }
        if let Some(t) = self.catch_up_timeout_seconds {
            if t > 24 * 3600 {
                return bad(
                    "catch_up_timeout_seconds",
                    format!("is {t}; give at most 86400 (a day)"),
                );
            }
        }
        if let Some(p) = self.max_parts {
            if !(1..=MAX_PARTS).contains(&p) {
                return bad(
                    "max_parts",
                    format!("is {p}; give 1 to {MAX_PARTS} ranges per split table"),
                );
            }
        }
        if let Some(r) = self.retries {
            if r > MAX_RETRIES {
                return bad(
                    "retries",
                    format!("is {r}; give 0 to {MAX_RETRIES} attempts"),
                );
            }
        }
        if let Some(m) = &self.maintenance_work_mem {
            if !is_memory_setting(m) {
                return bad(
                    "maintenance_work_mem",
                    format!(
                        "'{}' is not a PostgreSQL memory setting such as 256MB or 1GB \
                         (units kB, MB, GB, TB; a bare number is kB)",
                        m.chars().take(40).collect::<String>()
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A value PostgreSQL reads as a memory setting: digits, then optionally one of its units, as
/// it spells them. Its range (1 MB to 2 GB for `maintenance_work_mem`) is the server's to check.
pub fn is_memory_setting(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    (1..=12).contains(&number.len())
        && matches!(
            unit.strip_prefix(' ').unwrap_or(unit),
            "" | "B" | "kB" | "MB" | "GB" | "TB"
        )
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a job does, without its secrets: stored in the `spec` attribute (with `command` beside
/// it as its own attribute).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The command.
    pub command: Command,
    /// Table selection.
    #[serde(default)]
    pub filter: FilterSpec,
    /// Options.
    #[serde(default)]
    pub options: Options,
}

/// Where a running job is, as the worker last wrote it. Every field has a default, so records
/// written by older workers still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    /// The engine's phase (`preflight`, `schema`, `data`, `post-data`, `finish` …).
    pub phase: String,
    /// Tables whose rows are all copied.
    pub tables_done: u64,
    /// Tables to copy.
    pub tables_total: u64,
    /// Rows copied so far.
    pub rows: u64,
    /// Bytes of COPY data moved so far.
    pub bytes: u64,
    /// Estimated bytes in all.
    pub bytes_total: u64,
    /// Units of work done (a table, or one block range of a split table).
    pub units_done: u64,
    /// Units of work planned.
    pub units_total: u64,
    /// Indexes, constraints and other post-data items built.
    pub post_items_done: u64,
    /// Post-data items planned.
    pub post_items_total: u64,
    /// Recent COPY rate.
    pub bytes_per_sec: u64,
    /// Seconds left at the current rate, when there is a rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Tables being copied now.
    pub current_tables: Vec<String>,
    /// What the engine warned about so far, oldest first: the lines a local run prints as
    /// `warning: …`. At most [`MAX_WARNINGS`], each at most [`MAX_WARNING_CHARS`] characters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Steps the engine tried again after a transient failure, oldest first: the lines a local
    /// run prints as `retrying …`. At most [`MAX_RETRIES_KEPT`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<Retry>,
}

/// A step tried again after a transient failure (a lost connection, a deadlock).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Retry {
    /// The step (a unit, an index, `connect to the source` …).
    pub what: String,
    /// Which attempt comes next (2 for the first retry).
    pub attempt: u32,
    /// Why the attempt before failed, one line, without secrets.
    pub error: String,
}

/// The most warnings a job record keeps (the worker's log has them all).
pub const MAX_WARNINGS: usize = 50;
/// The most retries a job record keeps (the first ones; the worker's log has them all).
pub const MAX_RETRIES_KEPT: usize = 50;
/// The longest warning a job record keeps.
pub const MAX_WARNING_CHARS: usize = 1000;

impl Progress {
    /// How far the copy got, in whole percent of the bytes it expected to copy (None before
    /// the plan says how many).
    pub fn percent(&self) -> Option<u64> {
        (self.bytes_total > 0).then(|| (self.bytes.min(self.bytes_total) * 100) / self.bytes_total)
    }

    /// Keep a warning, within the record's bounds: a long one is cut (to [`MAX_WARNING_CHARS`]
    /// with its `…`), and once [`MAX_WARNINGS`] are kept the last entry becomes a note that the
    /// worker's log holds more.
    pub fn add_warning(&mut self, warning: &str) {
        let w = cut(warning);
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        } else if let Some(last) = self.warnings.last_mut() {
            MORE_WARNINGS.clone_into(last);
        }
    }

    /// Keep a retry, within the record's bounds (each text cut as a warning is).
    pub fn add_retry(&mut self, what: &str, attempt: u32, error: &str) {
        if self.retries.len() < MAX_RETRIES_KEPT {
            self.retries.push(Retry {
                what: cut(what),
                attempt,
                error: cut(error),
            });
        }
    }
}

fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_WARNING_CHARS {
        return text.to_owned();
    }
    let mut t: String = text.chars().take(MAX_WARNING_CHARS - 1).collect();
    t.push('…');
    t
}

/// The last warning of a record that had to leave some out.
pub const MORE_WARNINGS: &str =
    "more warnings than a job record keeps: the worker's log has them all";

/// A machine-readable error code with a message for people; the body of every API error and
/// the `error` attribute of a failed job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, `snake_case` (`source_unreachable`, `heartbeat_lost`, `invalid_request` …).
    pub code: String,
    /// One line saying what went wrong and what to do.
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// How a worker's instance is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Market {
    /// EC2 spot capacity: cheaper, and may be reclaimed with two minutes' notice.
    Spot,
    /// EC2 on-demand capacity.
    OnDemand,
    /// A process on the coordinator's machine (the local stack): no instance, no EC2 cost.
    Local,
}

impl Market {
    /// `spot`, `on-demand`, `local`: as people read it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spot => "spot",
            Self::OnDemand => "on-demand",
            Self::Local => "local",
        }
    }
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker a job was given: which instance, of what type, bought how, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRun {
    /// Instance id (`i-…`) or `local-<pid>`.
    pub instance_id: String,
    /// EC2 instance type (`local` for a local worker).
    pub instance_type: String,
    /// Spot, on-demand or local.
    pub market: Market,
    /// Why an on-demand instance when the deployment asks for spot first (spot capacity
    /// refused, or the job's spot worker was reclaimed before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_because: Option<String>,
    /// When it was launched.
    pub launched_at: Timestamp,
}

/// One job as stored. Its serde form (sealed URLs in base64) is the SQLite store's record; the
/// API shows a [`crate::api::JobView`] instead, and DynamoDB gets [`crate::item`]'s attributes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (a UUID).
    pub job_id: String,
    /// The key that submitted it.
    pub owner: Owner,
    /// Current status.
    pub status: JobStatus,
    /// What to do.
    pub spec: JobSpec,
    /// Source URL sealed by a [`crate::Sealer`] under this job's id.
    #[serde(with = "b64")]
    pub source_secret: Vec<u8>,
    /// Target URL sealed likewise.
    #[serde(with = "b64")]
    pub target_secret: Vec<u8>,
    /// Source URL without its password.
    pub source_display: String,
    /// Target URL without its password.
    pub target_display: String,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When a worker claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The worker's last sign of life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<Timestamp>,
    /// When its owner asked it to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<Timestamp>,
    /// The worker's instance id (or `local-<pid>` for a local worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The worker's last progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// What a `verify` or `validate` job found: the report its `--json` prints locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<crate::report::JobResult>,
    /// The `Idempotency-Key` it was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Which worker runs it: 1 for the first; a job whose worker was lost is given another,
    /// which resumes it, up to `spec.options.max_attempts`.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The workers started for it, first first: one per attempt (what the instance-hours and
    /// the cost after the job are computed from).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerRun>,
    /// Bumped by every write; conditional writes compare it.
    pub version: u64,
    /// Expiry, seconds since the Unix epoch (DynamoDB TTL).
    pub ttl: i64,
}

fn first_attempt() -> u32 {
    1
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Job {
    // By hand so that no one ever prints the sealed blobs, even though they are ciphertext.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("job_id", &self.job_id)
            .field("owner", &self.owner)
            .field("status", &self.status)
            .field("spec", &self.spec)
            .field("source_display", &self.source_display)
            .field("target_display", &self.target_display)
            .field("created_at", &self.created_at)
            .field("instance_id", &self.instance_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// How long finished and abandoned job records are kept by default (DynamoDB TTL).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Job {
    /// A new `pending` job, version 1, expiring `retention` after `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: String,
        owner: Owner,
        spec: JobSpec,
        sealed: (Vec<u8>, Vec<u8>),
        displays: (String, String),
        idempotency_key: Option<String>,
        now: Timestamp,
        retention: Duration,
    ) -> Self {
        Self {
            job_id,
            owner,
            status: JobStatus::Pending,
            spec,
            source_secret: sealed.0,
            target_secret: sealed.1,
            source_display: displays.0,
            target_display: displays.1,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            heartbeat_at: None,
            cancel_requested_at: None,
            instance_id: None,
            progress: None,
            error: None,
            result: None,
            idempotency_key,
            attempt: 1,
            workers: Vec::new(),
            version: 1,
            ttl: now.plus(retention).unix_seconds(),
        }
    }

    /// A fresh job id.
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// Whether `s` looks like a job id this system makes (a lowercase hyphenated UUID). Routes
/// reject anything else before touching a store.
pub fn is_valid_job_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok() && !s.chars().any(|c| c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_utc_and_sort_like_time() {
        let a = Timestamp::from_unix_millis(1_795_000_000_005);
        let b = Timestamp::from_unix_millis(1_795_000_000_120);
        assert_eq!(a.to_rfc3339().len(), 24);
        assert!(a.to_rfc3339().ends_with('Z'));
        assert!(a.to_rfc3339() < b.to_rfc3339());
        assert_eq!(Timestamp::parse(&a.to_rfc3339()), Ok(a));
        // Other offsets and precisions read (older records, other writers).
        let t = Timestamp::parse("2026-11-27T23:07:22+01:00").expect("offset");
        assert_eq!(t.to_rfc3339(), "2026-11-27T22:07:22.000Z");
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn owner_is_a_hash_prefix_not_the_key() {
        let o = Owner::of_api_key("sk-very-secret");
        assert!(o.as_str().starts_with("key-"));
        assert_eq!(o.as_str().len(), 20);
        assert!(!o.as_str().contains("secret"));
        assert_ne!(o, Owner::of_api_key("sk-other"));
    }

    #[test]
    fn options_are_checked_for_range_and_for_the_command() {
        let init = Options {
            jobs: Some(8),
            copy_format: Some(CopyFormat::Text),
            split_tables_larger_than_bytes: Some(0),
            max_parts: Some(16),
            retries: Some(0),
            maintenance_work_mem: Some("1GB".into()),
            timeout_seconds: Some(60),
            ..Options::default()
        };
        assert_eq!(init.check(Command::Init), Ok(()));
        let refused = init
            .check(Command::Verify)
            .expect_err("init options on verify");
        assert_eq!(refused.field, "copy_format");
        assert_eq!(
            refused.to_string(),
            "options.copy_format does not apply to verify; leave it out"
        );
        let bad = |o: Options| o.check(Command::Init).expect_err("out of range").field;
        assert_eq!(
            bad(Options {
                jobs: Some(0),
                ..Options::default()
            }),
            "jobs"
        );
        assert_eq!(
            bad(Options {
                max_parts: Some(0),
                ..Options::default()
            }),
            "max_parts"
        );
        assert_eq!(
            bad(Options {
                retries: Some(101),
                ..Options::default()
            }),
            "retries"
        );
        for m in [
            "",
            "lots",
            "1 GB extra",
            "1gb",
            "256MB; DROP TABLE t",
            "12345678901234MB",
            "1\tGB",
            "1\n",
            "1  GB",
        ] {
            let o = Options {
                maintenance_work_mem: Some(m.into()),
                ..Options::default()
            };
            assert_eq!(bad(o), "maintenance_work_mem", "{m:?}");
        }
        for m in ["256MB", "1GB", "65536", "2 GB", "1TB"] {
            assert!(is_memory_setting(m), "{m:?}");
        }
        // Options a worker run of any command takes; nothing of init's on validate.
        let anywhere = Options {
            instance_type: Some("c5.large".into()),
            source_size_bytes: Some(1),
            timeout_seconds: Some(1),
            ..Options::default()
        };
        assert_eq!(anywhere.check(Command::Validate), Ok(()));
        let verify = Options {
            chunk_rows: Some(0),
            ..Options::default()
        };
        assert_eq!(
            verify.check(Command::Verify).expect_err("range").field,
            "chunk_rows"
        );
        assert_eq!(
            verify.check(Command::Init).expect_err("not init's").problem,
            "does not apply to init; leave it out"
        );
    }

    #[test]
    fn warnings_stay_within_the_records_bounds() {
        let mut p = Progress::default();
        p.add_warning(&"x".repeat(MAX_WARNING_CHARS + 5));
        assert_eq!(p.warnings[0].chars().count(), MAX_WARNING_CHARS);
        assert!(p.warnings[0].ends_with('…'));
        for i in 1..MAX_WARNINGS + 10 {
            p.add_warning(&format!("w{i}"));
        }
        assert_eq!(p.warnings.len(), MAX_WARNINGS);
        assert_eq!(
            p.warnings[MAX_WARNINGS - 2],
            format!("w{}", MAX_WARNINGS - 2)
        );
        assert_eq!(p.warnings[MAX_WARNINGS - 1], MORE_WARNINGS);
    }

    #[test]
    fn retries_are_kept_typed_and_bounded() {
        let mut p = Progress::default();
        for i in 0..MAX_RETRIES_KEPT + 5 {
            p.add_retry(&format!("unit {i}"), 2, &"e".repeat(MAX_WARNING_CHARS * 2));
        }
        assert_eq!(p.retries.len(), MAX_RETRIES_KEPT);
        assert_eq!(p.retries[0].what, "unit 0");
        assert_eq!(p.retries[0].error.chars().count(), MAX_WARNING_CHARS);
        let back: Progress =
            serde_json::from_value(serde_json::to_value(&p).expect("json")).expect("decode");
        assert_eq!(back, p);
        // A record written before retries were kept still reads, with none.
        let old: Progress =
            serde_json::from_str(r#"{"phase":"data","warnings":["w"]}"#).expect("old record");
        assert!(old.retries.is_empty());
        assert!(!serde_json::to_string(&Progress::default())
            .expect("json")
            .contains("retries"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = crate::Secret::new("postgresql://u:hunter2@h/db");
        assert_eq!(format!("{s} {s:?}"), "******** ********");
    }

    #[test]
    fn job_ids_are_lowercase_uuids() {
        assert!(is_valid_job_id(&Job::new_id()));
        assert!(!is_valid_job_id("../etc/passwd"));
        assert!(!is_valid_job_id("8F0E1F2C-3A4B-4C5D-8E9F-0A1B2C3D4E5F"));
    }

    #[test]
    fn progress_written_by_an_older_worker_still_reads() {
        // A record written before `eta_seconds` and `current_tables` existed.
        let old = r#"{"phase":"data","tables_done":3,"tables_total":9,"rows":10,"bytes":20,"bytes_total":90}"#;
        let p: Progress = serde_json::from_str(old).expect("old progress");
        assert_eq!(p.tables_done, 3);
        assert_eq!(p.eta_seconds, None);
        assert!(p.current_tables.is_empty());
        // And an empty one.
        assert_eq!(
            serde_json::from_str::<Progress>("{}").expect("empty"),
            Progress::default()
        );
    }

    #[test]
    fn unknown_option_names_are_named_in_the_error() {
        let err = serde_json::from_str::<Options>(r#"{"jobz":4}"#).expect_err("unknown");
        assert!(err.to_string().contains("unknown field `jobz`"), "{err}");
    }
}

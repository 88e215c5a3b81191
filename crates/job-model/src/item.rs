//! The DynamoDB item of a job, attribute by attribute.
//!
//! Operators query these names directly (`job_id.S`, `status.S`, `created_at.S`), so they and
//! their types are a contract: `job_id` S, `status` S, `created_at` S (RFC 3339 UTC), `ttl` N
//! (epoch seconds), `version` N, `source_secret`/`target_secret` B (sealed), `spec` M (filter
//! and options, no secrets), `progress` M, `error` M (`code`, `message`), `result` M (a verify or validate report), `attempt` N (which worker runs it, 1 for the first; absent in older items), `workers` L of M (each worker started for it: `instance_id`, `instance_type`, `market`, `launched_at`, `on_demand_because`). Optional attributes
//! are absent rather than NULL. Reading is lenient about what older writers left out.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::job::{Command, ErrorBody, FilterSpec, Job, JobSpec, Options, Owner, Timestamp};
use crate::status::JobStatus;
use crate::store::StoreError;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Attribute names, in one place.
pub mod attr {
    /// Hash key.
    pub const JOB_ID: &str = "job_id";
    /// Status (GSI hash key).
    pub const STATUS: &str = "status";
    /// Submission time (GSI range key).
    pub const CREATED_AT: &str = "created_at";
    /// Last change.
    pub const UPDATED_AT: &str = "updated_at";
    /// Claimed.
    pub const STARTED_AT: &str = "started_at";
    /// Finished.
    pub const FINISHED_AT: &str = "finished_at";
    /// Worker's last sign of life.
    pub const HEARTBEAT_AT: &str = "heartbeat_at";
    /// Owner asked it to stop.
    pub const CANCEL_REQUESTED_AT: &str = "cancel_requested_at";
    /// Command.
    pub const COMMAND: &str = "command";
    /// Filter and options.
    pub const SPEC: &str = "spec";
    /// Sealed source URL.
    pub const SOURCE_SECRET: &str = "source_secret";
    /// Sealed target URL.
    pub const TARGET_SECRET: &str = "target_secret";
    /// Source URL without password.
    pub const SOURCE_DISPLAY: &str = "source_display";
    /// Target URL without password.
    pub const TARGET_DISPLAY: &str = "target_display";
    /// Worker instance.
    pub const INSTANCE_ID: &str = "instance_id";
    /// Progress.
    pub const PROGRESS: &str = "progress";
    /// Failure (a DynamoDB reserved word: always use `#error` in expressions).
    pub const ERROR: &str = "error";
    /// A `verify` or `validate` report (a DynamoDB reserved word: always use `#res`).
    pub const RESULT: &str = "result";
    /// Idempotency key the job was submitted with.
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// Owner (owner index hash key).
    pub const OWNER: &str = "owner";
    /// Which worker runs the job (1 for the first).
    pub const ATTEMPT: &str = "attempt";
    /// The workers started for the job, first first.
    pub const WORKERS: &str = "workers";
    /// Write counter for conditional updates.
    pub const VERSION: &str = "version";
    /// Expiry, epoch seconds.
    pub const TTL: &str = "ttl";
}

/// A serde value as an attribute value (maps, lists, strings, numbers, booleans, null).
pub fn to_attr<T: Serialize>(v: &T) -> AttributeValue {
    json_to_attr(&serde_json::to_value(v).unwrap_or(serde_json::Value::Null))
}

fn json_to_attr(v: &serde_json::Value) -> AttributeValue {
    use serde_json::Value;
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(a) => AttributeValue::L(a.iter().map(json_to_attr).collect()),
        Value::Object(o) => AttributeValue::M(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_attr(v)))
                .collect(),
        ),
    }
}

fn attr_to_json(v: &AttributeValue) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match v {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => {
            let num = if let Ok(i) = n.parse::<i64>() {
                serde_json::Number::from(i)
            } else if let Ok(u) = n.parse::<u64>() {
                serde_json::Number::from(u)
            } else {
                n.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .ok_or_else(|| format!("number '{n}' does not read"))?
            };
            Value::Number(num)
        }
        AttributeValue::L(l) => Value::Array(l.iter().map(attr_to_json).collect::<Result<_, _>>()?),
        AttributeValue::M(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), attr_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!("unexpected attribute type {other:?}")),
    })
}

/// An attribute value read as a serde type.
///
/// # Errors
/// When the value's shape does not fit `T`.
pub fn from_attr<T: DeserializeOwned>(v: &AttributeValue) -> Result<T, String> {
    serde_json::from_value(attr_to_json(v)?).map_err(|e| e.to_string())
}

/// A timestamp attribute.
pub fn ts(t: Timestamp) -> AttributeValue {
    AttributeValue::S(t.to_rfc3339())
}

/// A number attribute.
pub fn num(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

#[derive(Serialize, serde::Deserialize, Default)]
#[serde(default)]
struct StoredSpec {
    filter: FilterSpec,
    options: Options,
}

/// The item for `job`.
pub fn to_item(job: &Job) -> Item {
    let mut item = Item::new();
    let mut put = |k: &str, v: AttributeValue| {
        item.insert(k.to_owned(), v);
    };
    put(attr::JOB_ID, AttributeValue::S(job.job_id.clone()));
    put(attr::STATUS, AttributeValue::S(job.status.as_str().into()));
    put(attr::CREATED_AT, ts(job.created_at));
    put(attr::UPDATED_AT, ts(job.updated_at));
    put(
        attr::COMMAND,
        AttributeValue::S(job.spec.command.as_str().into()),
    );
    put(
        attr::SPEC,
        to_attr(&StoredSpec {
            filter: job.spec.filter.clone(),
            options: job.spec.options.clone(),
        }),
    );
    put(
        attr::SOURCE_SECRET,
        AttributeValue::B(Blob::new(job.source_secret.clone())),
    );
    put(
        attr::TARGET_SECRET,
        AttributeValue::B(Blob::new(job.target_secret.clone())),
    );
    put(
        attr::SOURCE_DISPLAY,
        AttributeValue::S(job.source_display.clone()),
    );
    put(
        attr::TARGET_DISPLAY,
        AttributeValue::S(job.target_display.clone()),
    );
    put(attr::OWNER, AttributeValue::S(job.owner.as_str().into()));
    put(attr::VERSION, num(job.version));
    put(attr::ATTEMPT, num(job.attempt));
    put(attr::TTL, num(job.ttl));
    let optional_ts = [
        (attr::STARTED_AT, job.started_at),
        (attr::FINISHED_AT, job.finished_at),
        (attr::HEARTBEAT_AT, job.heartbeat_at),
        (attr::CANCEL_REQUESTED_AT, job.cancel_requested_at),
    ];
    for (k, v) in optional_ts {
        if let Some(t) = v {
            put(k, ts(t));
        }
    }
    if let Some(i) = &job.instance_id {
        put(attr::INSTANCE_ID, AttributeValue::S(i.clone()));
    }
    if let Some(p) = &job.progress {
        put(attr::PROGRESS, to_attr(p));
    }
    if let Some(e) = &job.error {
        put(attr::ERROR, to_attr(e));
    }
    if let Some(r) = &job.result {
        put(attr::RESULT, to_attr(r));
    }
    if let Some(k) = &job.idempotency_key {
        put(attr::IDEMPOTENCY_KEY, AttributeValue::S(k.clone()));
    }
    if !job.workers.is_empty() {
        put(attr::WORKERS, to_attr(&job.workers));
    }
    item
}

struct Reader<'a> {
    item: &'a Item,
    job_id: String,
}

impl Reader<'_> {
    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            job_id: self.job_id.clone(),
            reason,
        }
    }

    fn s(&self, k: &str) -> Result<Option<String>, StoreError> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.corrupt(format!("{k} is not a string"))),
        }
    }

    fn req_s(&self, k: &str) -> Result<String, StoreError> {
        self.s(k)?
            .ok_or_else(|| self.corrupt(format!("{k} is missing")))
    }

    fn ts(&self, k: &str) -> Result<Option<Timestamp>, StoreError> {
        self.s(k)?
            .map(|s| Timestamp::parse(&s).map_err(|e| self.corrupt(format!("{k}: {e}"))))
            .transpose()
    }

    fn n(&self, k: &str) -> Result<Option<i64>, StoreError> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(format!("{k} '{n}' is not an integer"))),
            Some(_) => Err(self.corrupt(format!("{k} is not a number"))),
        }
    }

    fn secret(&self, k: &str, status: JobStatus) -> Result<Vec<u8>, StoreError> {
        match self.item.get(k) {
            None if status.is_terminal() => Ok(Vec::new()),
            _ => self.b(k),
        }
    }

    fn b(&self, k: &str) -> Result<Vec<u8>, StoreError> {
        match self.item.get(k) {
            Some(AttributeValue::B(b)) => Ok(b.as_ref().to_vec()),
            None => Err(self.corrupt(format!("{k} is missing"))),
            Some(_) => Err(self.corrupt(format!("{k} is not binary"))),
        }
    }

    fn de<T: DeserializeOwned>(&self, k: &str) -> Result<Option<T>, StoreError> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(v) => from_attr(v)
                .map(Some)
                .map_err(|e| self.corrupt(format!("{k}: {e}"))),
        }
    }
}

/// The job in `item`.
///
/// # Errors
/// [`StoreError::Corrupt`] naming the attribute that is missing or of the wrong type.
pub fn from_item(item: &Item) -> Result<Job, StoreError> {
    let job_id = match item.get(attr::JOB_ID) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => String::from("(no job_id)"),
    };
    let r = Reader { item, job_id };
    let status: JobStatus = r
        .req_s(attr::STATUS)?
        .parse()
        .map_err(|e: crate::status::UnknownStatus| r.corrupt(e.to_string()))?;
    let command_text = r.req_s(attr::COMMAND)?;
    let command = Command::parse(&command_text)
        .ok_or_else(|| r.corrupt(format!("unknown command '{command_text}'")))?;
    let stored: StoredSpec = r.de(attr::SPEC)?.unwrap_or_default();
    let created_at = r
        .ts(attr::CREATED_AT)?
        .ok_or_else(|| r.corrupt("created_at is missing".into()))?;
    Ok(Job {
        job_id: r.job_id.clone(),
        owner: Owner(r.s(attr::OWNER)?.unwrap_or_default()),
        status,
        spec: JobSpec {
            command,
            filter: stored.filter,
            options: stored.options,
        },
        // Removed when the job ends (nothing needs them after); required while it is active.
        source_secret: r.secret(attr::SOURCE_SECRET, status)?,
        target_secret: r.secret(attr::TARGET_SECRET, status)?,
        source_display: r.s(attr::SOURCE_DISPLAY)?.unwrap_or_default(),
        target_display: r.s(attr::TARGET_DISPLAY)?.unwrap_or_default(),
        created_at,
        updated_at: r.ts(attr::UPDATED_AT)?.unwrap_or(created_at),
        started_at: r.ts(attr::STARTED_AT)?,
        finished_at: r.ts(attr::FINISHED_AT)?,
        heartbeat_at: r.ts(attr::HEARTBEAT_AT)?,
        cancel_requested_at: r.ts(attr::CANCEL_REQUESTED_AT)?,
        instance_id: r.s(attr::INSTANCE_ID)?,
        progress: r.de(attr::PROGRESS)?,
        error: r.de::<ErrorBody>(attr::ERROR)?,
        result: r.de(attr::RESULT)?,
        idempotency_key: r.s(attr::IDEMPOTENCY_KEY)?,
        attempt: r
            .n(attr::ATTEMPT)?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1),
        workers: r.de(attr::WORKERS)?.unwrap_or_default(),
        version: r
            .n(attr::VERSION)?
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(1),
        ttl: r.n(attr::TTL)?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Progress;

    fn sample() -> Job {
        let mut j = Job::new(
            "0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11".into(),
            Owner::of_api_key("k"),
            JobSpec {
                command: Command::Init,
                filter: FilterSpec {
                    include_tables: vec!["public.*".into()],
                    ..FilterSpec::default()
                },
                options: Options {
                    jobs: Some(8),
                    drop_existing: true,
                    ..Options::default()
                },
            },
            (vec![1, 2, 3], vec![4, 5]),
            (
                "postgresql://u@src:5432/db".into(),
                "postgresql://u@dst:5432/db".into(),
            ),
            Some("idem-1".into()),
            Timestamp::from_unix_millis(1_795_000_000_000),
            crate::job::DEFAULT_RETENTION,
        );
        j.progress = Some(Progress {
            phase: "data".into(),
            tables_done: 2,
            tables_total: 5,
            eta_seconds: Some(30),
            current_tables: vec!["public.a".into()],
            ..Progress::default()
        });
        j.error = Some(ErrorBody::new("x", "y"));
        j.result = Some(crate::report::JobResult::Validate(
            crate::report::ValidateResult {
                version: crate::report::REPORT_VERSION,
                ok: false,
                checks: vec![crate::report::CheckReport {
                    check: "a".into(),
                    result: "fail".into(),
                    detail: "d".into(),
                    fix: String::new(),
                }],
            },
        ));
        j.instance_id = Some("i-0123".into());
        j
    }

    #[test]
    fn a_job_round_trips_through_its_item() {
        let j = sample();
        assert_eq!(from_item(&to_item(&j)).expect("decode"), j);
    }

    #[test]
    fn operators_attributes_have_their_contract_types() {
        let item = to_item(&sample());
        assert!(matches!(item.get("job_id"), Some(AttributeValue::S(_))));
        assert!(matches!(item.get("status"), Some(AttributeValue::S(s)) if s == "pending"));
        assert!(
            matches!(item.get("created_at"), Some(AttributeValue::S(s)) if s == "2026-11-18T11:06:40.000Z")
        );
        assert!(matches!(item.get("ttl"), Some(AttributeValue::N(n)) if n == "1797592000"));
        assert!(matches!(
            item.get("source_secret"),
            Some(AttributeValue::B(_))
        ));
        assert!(matches!(item.get("error"), Some(AttributeValue::M(m)) if m.contains_key("code")));
        // Absent, not NULL.
        assert!(!item.contains_key("finished_at"));
    }

    #[test]
    fn an_item_written_by_an_earlier_coordinator_still_reads() {
        // The shape of the first release: no spec map, no version, no idempotency key or
        // cancel request, progress without eta, a timestamp without milliseconds.
        let mut item = Item::new();
        let s = |v: &str| AttributeValue::S(v.into());
        item.insert("job_id".into(), s("0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11"));
        item.insert("status".into(), s("running"));
        item.insert("command".into(), s("init"));
        item.insert("created_at".into(), s("2026-11-01T10:00:00Z"));
        item.insert("owner".into(), s("key-0123456789abcdef"));
        item.insert(
            "source_secret".into(),
            AttributeValue::B(Blob::new(vec![9])),
        );
        item.insert(
            "target_secret".into(),
            AttributeValue::B(Blob::new(vec![8])),
        );
        item.insert("ttl".into(), AttributeValue::N("1764583200".into()));
        item.insert(
            "progress".into(),
            AttributeValue::M(HashMap::from([
                ("phase".into(), s("data")),
                ("rows".into(), AttributeValue::N("1200".into())),
            ])),
        );
        let j = from_item(&item).expect("old item");
        assert_eq!(j.status, JobStatus::Running);
        assert_eq!(j.version, 1);
        assert_eq!(j.updated_at, j.created_at);
        assert_eq!(j.progress.map(|p| p.rows), Some(1200));
        assert!(j.spec.filter.is_empty());
    }

    #[test]
    fn a_broken_item_names_the_attribute() {
        let mut item = to_item(&sample());
        item.insert("status".into(), AttributeValue::N("3".into()));
        let err = from_item(&item).expect_err("corrupt").to_string();
        assert!(err.contains("status is not a string"), "{err}");
        item.remove("status");
        let err = from_item(&item).expect_err("corrupt").to_string();
        assert!(err.contains("status is missing"), "{err}");
    }
}

//! The HTTP API's request and response bodies (`/jobs`, `/estimates`, `/jobs/{job_id}`,
//! `/health`).
//!
//! Requests refuse unknown fields, naming them, so a misspelt option is an error rather than
//! silently ignored. Responses never carry a secret: [`JobView`] is a [`Job`] without its sealed
//! URLs.

use serde::{Deserialize, Serialize};

use crate::job::{Command, ErrorBody, FilterSpec, Job, JobSpec, Options, Progress, Timestamp};
use crate::status::JobStatus;

/// `POST /jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// `init`, `sync`, `verify` or `validate`.
    pub command: Command,
    /// The source connection URL, password included. Sealed before it is stored.
    pub source_url: String,
    /// The target connection URL, password included. Sealed before it is stored.
    pub target_url: String,
    /// How to run.
    #[serde(default)]
    pub options: Options,
    /// Which tables.
    #[serde(default)]
    pub filter: FilterSpec,
}

impl SubmitRequest {
    /// The stored part: everything but the URLs.
    pub fn spec(&self) -> JobSpec {
        JobSpec {
            command: self.command,
            filter: self.filter.clone(),
            options: self.options.clone(),
        }
    }
}

/// `POST /estimates`: nothing is stored or started; the answer (200) is what the job
/// would run on and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunResponse {
    /// Always true: nothing was started.
    pub dry_run: bool,
    /// The instance, duration and cost the coordinator expects.
    pub estimate: crate::cost::Estimate,
}

/// The answer to `POST /jobs` (202, or 200 for a repeated `Idempotency-Key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The new (or existing) job.
    pub job_id: String,
    /// Its status now.
    pub status: JobStatus,
}

/// A job as the API shows it: everything but its secrets and owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Id.
    pub job_id: String,
    /// Status.
    pub status: JobStatus,
    /// Command.
    pub command: Command,
    /// Filter.
    #[serde(default)]
    pub filter: FilterSpec,
    /// Options.
    #[serde(default)]
    pub options: Options,
    /// Source URL without its password.
    pub source_display: String,
    /// Target URL without its password.
    pub target_display: String,
    /// Submitted.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Claimed by a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Worker's last sign of life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<Timestamp>,
    /// When a cancel was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<Timestamp>,
    /// Worker instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Last progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Why it failed; on a job that is not finished, why its last worker was lost (the one
    /// now starting or running resumes after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// What a `verify` or `validate` job found (the report its `--json` prints locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<crate::report::JobResult>,
    /// Which worker runs (or ran) it: 1 for the first.
    #[serde(default = "one")]
    pub attempt: u32,
    /// The most workers it may use (`options.max_attempts`, or the default).
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// The workers it was given and the instance-hours and cost they imply, up to the moment
    /// of the answer while one runs ([`crate::cost::usage`]); absent before the first worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::cost::Usage>,
}

fn one() -> u32 {
    1
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        Self {
            job_id: j.job_id.clone(),
            status: j.status,
            command: j.spec.command,
            filter: j.spec.filter.clone(),
            options: j.spec.options.clone(),
            source_display: j.source_display.clone(),
            target_display: j.target_display.clone(),
            created_at: j.created_at,
            updated_at: j.updated_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            heartbeat_at: j.heartbeat_at,
            cancel_requested_at: j.cancel_requested_at,
            instance_id: j.instance_id.clone(),
            progress: j.progress.clone(),
            error: j.error.clone(),
            result: j.result.clone(),
            attempt: j.attempt,
            max_attempts: j.spec.options.attempts_allowed(),
            usage: crate::cost::usage(j, Timestamp::now()),
        }
    }
}

/// `GET /jobs`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResponse {
    /// One page of the caller's jobs.
    pub jobs: Vec<JobView>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Every error answer: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when it answers.
    pub status: String,
    /// The coordinator's version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_submit_reads_with_defaults() {
        let r: SubmitRequest = serde_json::from_str(
            r#"{"command":"init","source_url":"postgresql://a@h/db","target_url":"postgresql://b@h/db"}"#,
        )
        .expect("minimal");
        assert_eq!(r.command, Command::Init);
        assert_eq!(r.options, Options::default());
        assert!(r.filter.is_empty());
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = serde_json::from_str::<SubmitRequest>(
            r#"{"command":"init","source_url":"x","target_url":"y","dry_run":true}"#,
        )
        .expect_err("unknown");
        assert!(err.to_string().contains("unknown field `dry_run`"), "{err}");
        let err = serde_json::from_str::<SubmitRequest>(
            r#"{"command":"init","source_url":"x","target_url":"y","filter":{"tables":["a"]}}"#,
        )
        .expect_err("unknown");
        assert!(err.to_string().contains("unknown field `tables`"), "{err}");
    }

    #[test]
    fn unknown_commands_are_refused() {
        let err = serde_json::from_str::<SubmitRequest>(
            r#"{"command":"drop","source_url":"x","target_url":"y"}"#,
        )
        .expect_err("unknown");
        assert!(err.to_string().contains("unknown variant `drop`"), "{err}");
    }

    #[test]
    fn a_job_view_recorded_by_an_earlier_coordinator_still_reads() {
        // As served before `cancel_requested_at`, `filter` and `options` were added.
        let old = r#"{"job_id":"0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11","status":"running",
            "command":"init","source_display":"postgresql://u@src:5432/db",
            "target_display":"postgresql://u@dst:5432/db",
            "created_at":"2026-11-01T10:00:00Z","updated_at":"2026-11-01T10:00:05.5Z",
            "progress":{"phase":"data","tables_done":1,"tables_total":2}}"#;
        let v: JobView = serde_json::from_str(old).expect("old view");
        assert_eq!(v.status, JobStatus::Running);
        assert_eq!(v.progress.map(|p| p.tables_total), Some(2));
        assert!(v.cancel_requested_at.is_none());
    }
}

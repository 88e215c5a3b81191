//! The remote client: submits jobs to the control plane's API, watches them, lists and cancels
//! them. Wire types come from `job-model`; transient HTTP failures (connection errors, 429,
//! 502–504) are retried with backoff, honouring `Retry-After`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use indicatif::HumanBytes;
use job_model::api::{
    DryRunResponse, ErrorResponse, JobView, ListResponse, SubmitRequest, SubmitResponse,
};
use job_model::cost::{Estimate, Usage};
use job_model::{JobStatus, Market};
use replicator_core::progress::{DataProgress, Event, Observer, Phase, PlanSummary};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// Where the control plane is.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The control plane's API endpoint (the deployment's api_endpoint output).
    #[arg(long, env = "SEREN_REMOTE_API", global = true)]
    pub remote_api: Option<String>,
    /// Your API key. Prefer the environment variable: it stays out of the process list.
    #[arg(long, env = "SEREN_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

impl RemoteArgs {
    /// A client for the endpoint and key given.
    ///
    /// # Errors
    /// When either is missing or malformed.
    pub fn api(&self) -> anyhow::Result<Api> {
        let base = self.remote_api.as_deref().context(
            "no API endpoint: set SEREN_REMOTE_API (or --remote-api) to the control plane's URL",
        )?;
        Api::new(base, self.api_key.as_deref().unwrap_or_default())
    }
}

/// Where the API is and who we are.
pub struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// How many times a request is tried before giving up on transient failures.
const ATTEMPTS: u32 = 6;

impl Api {
    /// A client for `base` (`SEREN_REMOTE_API`) with `key` (`SEREN_API_KEY`).
    ///
    /// # Errors
    /// When the URL is not http(s) or the client cannot be built.
    pub fn new(base: &str, key: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            bail!("SEREN_REMOTE_API '{base}' is not an http(s) URL; use the api_endpoint output of the deployment");
        }
        if key.is_empty() {
            bail!("no API key: set SEREN_API_KEY (or --api-key) to the key the operator gave you");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!(
                "postgres-seren-replicator/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .context("build the HTTP client")?;
        Ok(Self {
            base,
            key: key.to_owned(),
            http,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&SubmitRequest>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.key);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let transient = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&text).with_context(|| {
                            format!("the API answered {method} {path} with an unexpected body")
                        });
                    }
                    let message = serde_json::from_str::<ErrorResponse>(&text)
                        .map(|e| format!("{} ({})", e.error.message, e.error.code))
                        .unwrap_or_else(|_| format!("HTTP {status}"));
                    let retry = matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS
                            | StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if !retry {
                        bail!("{message}");
                    }
                    if let Some(ra) = retry_after {
                        delay = ra.min(Duration::from_secs(60));
                    }
                    message
                }
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    format!("cannot reach {}: {e}", self.base)
                }
                Err(e) => return Err(anyhow!(e).context(format!("{method} {path}"))),
            };
            if attempt >= ATTEMPTS {
                bail!("{transient} (after {ATTEMPTS} attempts)");
            }
            tracing::warn!(attempt, error = %transient, "retrying in {delay:?}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
            attempt += 1;
        }
    }

    /// `POST /jobs` with an idempotency key, so a retried submit makes no second job.
    ///
    /// # Errors
    /// When the API refuses the job or cannot be reached.
    pub async fn submit(&self, req: &SubmitRequest, key: &str) -> anyhow::Result<SubmitResponse> {
        self.call(Method::POST, "/jobs", Some(req), Some(key)).await
    }

    /// `POST /estimates`: what the job would run on and cost; nothing is submitted (a
    /// coordinator without the route answers 404, never starts the job).
    ///
    /// # Errors
    /// When the API refuses the request or cannot be reached.
    pub async fn estimate(&self, req: &SubmitRequest) -> anyhow::Result<DryRunResponse> {
        self.call(Method::POST, "/estimates", Some(req), None).await
    }

    /// `GET /jobs/{id}`.
    ///
    /// # Errors
    /// When the job is unknown (to this key) or the API cannot be reached.
    pub async fn job(&self, id: &str) -> anyhow::Result<JobView> {
        self.call(Method::GET, &format!("/jobs/{id}"), None, None)
            .await
    }

    /// `GET /jobs`.
    ///
    /// # Errors
    /// When the API cannot be reached.
    pub async fn list(
        &self,
        status: Option<JobStatus>,
        limit: u32,
        cursor: Option<&str>,
    ) -> anyhow::Result<ListResponse> {
        let mut q = vec![format!("limit={limit}")];
        if let Some(s) = status {
            q.push(format!("status={s}"));
        }
        if let Some(c) = cursor {
            q.push(format!("cursor={c}"));
        }
        self.call(Method::GET, &format!("/jobs?{}", q.join("&")), None, None)
            .await
    }

    /// `POST /jobs/{id}/cancel`.
    ///
    /// # Errors
    /// When the job is unknown, finished, or the API cannot be reached.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<JobView> {
        self.call(Method::POST, &format!("/jobs/{id}/cancel"), None, None)
            .await
    }
}

/// One line describing where a job is.
pub fn status_line(j: &JobView) -> String {
    let mut s = format!("{} {}", j.job_id, j.status);
    if j.attempt > 1 {
        s.push_str(&format!(" (attempt {}/{})", j.attempt, j.max_attempts));
    }
    if let Some(p) = &j.progress {
        s.push_str(&format!(
            " | {} | tables {}/{} | {} of ~{} | {} rows",
            if p.phase.is_empty() { "-" } else { &p.phase },
            p.tables_done,
            p.tables_total,
            HumanBytes(p.bytes),
            HumanBytes(p.bytes_total),
            p.rows
        ));
        if let Some(eta) = p.eta_seconds {
            s.push_str(&format!(" | ETA {eta} s"));
        }
    }
    if let Some(e) = &j.error {
        if ended_badly(j.status) {
            s.push_str(&format!(" | {}: {}", e.code, e.message));
        } else {
            // A job that lost a worker and goes on (or went on) with the next one.
            s.push_str(&format!(" | {}", e.message));
        }
    }
    s
}

/// `1 h 02 min`, `3 min 20 s`, `45 s`.
fn duration_text(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{} min {:02} s", s / 60, s % 60),
        s => format!("{s} s"),
    }
}

fn usd(v: f64) -> String {
    if v > 0.0 && v < 0.001 {
        "< $0.001".to_owned()
    } else {
        format!("${v:.3}")
    }
}

/// What `init --remote --dry-run` prints: the instance, the size, the duration and the cost,
/// each with what it rests on.
pub fn estimate_lines(e: &Estimate) -> Vec<String> {
    let mut out = vec![match e.market {
        Market::Local => {
            "worker    a local process on the coordinator's machine (no EC2 instance, no cost)"
                .to_owned()
        }
        Market::Spot => format!(
            "worker    {} on spot (on-demand if spot has no capacity)",
            e.instance_type
        ),
        Market::OnDemand => format!("worker    {} on demand", e.instance_type),
    }];
    out.push(match e.source_size_bytes {
        Some(b) => format!("source    {} (pg_database_size)", HumanBytes(b)),
        None => "source    size unknown (the source's pg_database_size could not be read): no \
                 duration or cost"
            .to_owned(),
    });
    let rate = format!("{} MB/s", e.throughput_bytes_per_sec / 1_000_000);
    if let (Some(copy), Some(billed)) = (e.copy_seconds, e.billed_seconds) {
        out.push(format!(
            "duration  ~{}: {} to start the worker, {} of copy at {rate} (the deployment's \
             throughput; see docs/cost.md)",
            duration_text(e.boot_seconds + copy),
            duration_text(e.boot_seconds),
            duration_text(copy),
        ));
        let rates = match (e.on_demand_per_hour_usd, e.spot_per_hour_usd) {
            (Some(od), Some(sp)) if e.market != Market::Local => Some(format!(
                " ({}: ${sp:.4}/h spot, ${od:.4}/h on demand; {} billed)",
                e.instance_type,
                duration_text(billed)
            )),
            _ => None,
        };
        match (e.spot_usd, e.on_demand_usd) {
            (_, Some(od)) if e.market == Market::Local => {
                out.push(format!("cost      {} (a local worker)", usd(od)));
            }
            (Some(sp), Some(od)) => out.push(format!(
                "cost      ~{} on spot, ~{} on demand{}",
                usd(sp),
                usd(od),
                rates.unwrap_or_default()
            )),
            _ => out.push(format!(
                "cost      unknown: no list price for {} here; see the EC2 pricing page",
                e.instance_type
            )),
        }
    }
    if e.market != Market::Local {
        out.push(format!(
            "prices    {}; data transfer not included",
            e.prices
        ));
    }
    out
}

/// What `jobs show` prints about a job's workers: each one's instance, market and billed time,
/// then the instance-hours and the cost they imply.
pub fn usage_lines(u: &Usage) -> Vec<String> {
    let mut out = Vec::new();
    for (i, w) in u.workers.iter().enumerate() {
        let mut line = format!(
            "worker {}  {}  {}  {}  {}",
            i + 1,
            w.run.instance_id,
            w.run.instance_type,
            w.run.market,
            duration_text(w.billed_seconds),
        );
        match (w.run.market, w.cost_usd) {
            (Market::Local, _) => {}
            (_, Some(c)) => line.push_str(&format!("  {}", usd(c))),
            (_, None) => line.push_str("  (no list price)"),
        }
        if w.ended_at.is_none() {
            line.push_str("  (running)");
        }
        if let Some(why) = &w.run.on_demand_because {
            line.push_str(&format!("  on demand because {why}"));
        }
        out.push(line);
    }
    let all_local = u.workers.iter().all(|w| w.run.market == Market::Local);
    if all_local {
        out.push("cost    none: local workers".to_owned());
        return out;
    }
    let so_far = if u.ongoing { " so far" } else { "" };
    out.push(match u.cost_usd {
        Some(c) => format!(
            "cost    {:.3} instance-hours{so_far}, ~{} ({}; storage and data transfer not included)",
            u.instance_hours,
            usd(c),
            u.prices
        ),
        None => format!(
            "cost    {:.3} instance-hours{so_far}; a worker's type has no list price here",
            u.instance_hours
        ),
    });
    out
}

fn ended_badly(status: job_model::JobStatus) -> bool {
    status.is_terminal() && status != job_model::JobStatus::Completed
}

/// The user detached from a remote job with Ctrl-C; the job goes on.
#[derive(Debug, thiserror::Error)]
#[error("detached from job {0}; it goes on. Follow it with `postgres-seren-replicator jobs watch {0}`, stop it with `postgres-seren-replicator jobs cancel {0}`")]
pub struct Detached(pub String);

/// How a watched job ended.
pub enum Watched {
    /// It reached this terminal status.
    Finished(Box<JobView>),
    /// The user pressed Ctrl-C; the job runs on.
    Detached(String),
}

/// Turns successive job records into the engine's events, so that a remote job is drawn by the
/// same display as a local run.
#[derive(Debug, Default)]
pub struct Replay {
    phase: String,
    planned: bool,
    /// Warnings of the record already replayed.
    warned: usize,
    /// Retries of the record already replayed.
    retried: usize,
}

impl Replay {
    /// The events that lead from the previous record to `j`.
    pub fn events(&mut self, j: &JobView) -> Vec<Event> {
        let mut out = Vec::new();
        let Some(p) = &j.progress else { return out };
        out.extend(
            p.warnings
                .iter()
                .skip(self.warned)
                .map(|w| Event::Warning(w.clone())),
        );
        self.warned = self.warned.max(p.warnings.len());
        out.extend(
            p.retries
                .iter()
                .skip(self.retried)
                .map(|r| Event::Retrying {
                    what: r.what.clone(),
                    attempt: r.attempt,
                    error: r.error.clone(),
                }),
        );
        self.retried = self.retried.max(p.retries.len());
        if p.phase != self.phase {
            p.phase.clone_into(&mut self.phase);
            if let Some(phase) = Phase::from_name(&p.phase) {
                out.push(Event::PhaseStarted(phase));
            }
        }
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        if !self.planned && p.units_total > 0 {
            self.planned = true;
            out.push(Event::Planned(PlanSummary {
                tables: n(p.tables_total),
                units: n(p.units_total),
                units_done: 0,
                bytes_estimate: p.bytes_total,
                rows_estimate: 0,
                post_data_items: n(p.post_items_total),
            }));
        }
        if self.planned {
            out.push(Event::Progress(DataProgress {
                bytes_copied: p.bytes,
                rows_copied: p.rows,
                estimate_done: p.bytes.min(p.bytes_total),
                estimate_total: p.bytes_total,
                units_done: n(p.units_done),
                units_total: n(p.units_total),
                post_items_done: n(p.post_items_done),
                active: p.current_tables.clone(),
                bytes_per_sec: p.bytes_per_sec,
                eta_secs: p.eta_seconds,
            }));
        }
        out
    }
}

/// Follow a job until it reaches a terminal status, feeding its progress to `observer` (the
/// same display as a local run) and telling `note` when its status changes. Ctrl-C detaches
/// without touching the job.
///
/// # Errors
/// When the API stays unreachable.
pub async fn watch(
    api: &Api,
    id: &str,
    every: Duration,
    observer: &Observer,
    note: &dyn Fn(&str),
) -> anyhow::Result<Watched> {
    let mut replay = Replay::default();
    let mut status = None;
    let mut attempt = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let j = tokio::select! {
            j = api.job(id) => j?,
            _ = &mut ctrl_c => return Ok(Watched::Detached(id.to_owned())),
        };
        if attempt.is_some_and(|a| j.attempt > a) {
            // "worker lost after 42 %: …; resuming on attempt 2/3"
            if let Some(e) = &j.error {
                note(&e.message);
            }
        }
        attempt = Some(j.attempt);
        if status != Some(j.status) {
            status = Some(j.status);
            if !j.status.is_terminal() {
                // A pending job's instance is the lost worker's, if any: not worth naming.
                let on = j
                    .instance_id
                    .as_deref()
                    .filter(|_| j.status != job_model::JobStatus::Pending)
                    .map(|i| format!(" on {i}"))
                    .unwrap_or_default();
                note(&format!("job {} is {}{on}", j.job_id, j.status));
            }
        }
        for e in replay.events(&j) {
            observer(&e);
        }
        if j.status.is_terminal() {
            return Ok(Watched::Finished(Box::new(j)));
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = &mut ctrl_c => return Ok(Watched::Detached(id.to_owned())),
        }
    }
}

/// The message for a job that ended any other way than `completed`.
pub fn failure(j: &JobView) -> anyhow::Error {
    match &j.error {
        Some(e) => anyhow!("job {} {}: {} ({})", j.job_id, j.status, e.message, e.code),
        None => anyhow!("job {} {}", j.job_id, j.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_says_what_it_would_run_on_how_long_and_for_how_much() {
        let e = job_model::cost::estimate(
            "c5.2xlarge",
            Market::Spot,
            Some(300_000_000_000),
            60_000_000,
        );
        let text = estimate_lines(&e).join("\n");
        assert!(text.contains("worker    c5.2xlarge on spot"), "{text}");
        assert!(text.contains("source    279.40 GiB"), "{text}");
        assert!(
            text.contains("duration  ~1 h 25 min: 2 min 00 s to start the worker, 1 h 23 min of copy at 60 MB/s"),
            "{text}"
        );
        assert!(
            text.contains("cost      ~$0.193 on spot, ~$0.484 on demand (c5.2xlarge: $0.1360/h spot, $0.3400/h on demand"),
            "{text}"
        );
        assert!(text.contains("us-east-1"), "{text}");
        let unknown = estimate_lines(&job_model::cost::estimate(
            "c5.xlarge",
            Market::OnDemand,
            None,
            1,
        ))
        .join("\n");
        assert!(unknown.contains("size unknown"), "{unknown}");
        assert!(!unknown.contains("cost "), "{unknown}");
        let local = estimate_lines(&job_model::cost::estimate(
            "local",
            Market::Local,
            Some(60_000_000),
            60_000_000,
        ))
        .join("\n");
        assert!(local.contains("a local process"), "{local}");
        assert!(
            local.contains("cost      $0.000 (a local worker)"),
            "{local}"
        );
    }

    #[test]
    fn jobs_show_gives_each_worker_and_the_instance_hours() {
        let j: JobView = serde_json::from_str(
            r#"{"job_id":"j","status":"completed","command":"init","source_display":"s",
                "target_display":"t","created_at":"2026-11-27T10:00:00Z",
                "updated_at":"2026-11-27T12:00:00Z","attempt":2,"max_attempts":3,
                "usage":{"workers":[
                  {"instance_id":"i-1","instance_type":"c5.xlarge","market":"spot",
                   "launched_at":"2026-11-27T10:00:00Z","ended_at":"2026-11-27T10:30:00Z",
                   "billed_seconds":1800,"cost_usd":0.034},
                  {"instance_id":"i-2","instance_type":"c5.xlarge","market":"on_demand",
                   "on_demand_because":"its spot worker was reclaimed before",
                   "launched_at":"2026-11-27T10:30:00Z","ended_at":"2026-11-27T12:00:00Z",
                   "billed_seconds":5400,"cost_usd":0.255}],
                 "instance_hours":2.0,"cost_usd":0.289,"ongoing":false,"prices":"list"}}"#,
        )
        .expect("view");
        let lines = usage_lines(j.usage.as_ref().expect("usage"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0],
            "worker 1  i-1  c5.xlarge  spot  30 min 00 s  $0.034"
        );
        assert!(
            lines[1].ends_with("on demand because its spot worker was reclaimed before"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("cost    2.000 instance-hours, ~$0.289 (list;"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_status_line_counts_bytes_as_the_local_display_does() {
        let view: JobView = serde_json::from_str(
            r#"{"job_id":"0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11","status":"running","command":"init",
                "source_display":"s","target_display":"t","created_at":"2026-11-27T10:00:00Z",
                "updated_at":"2026-11-27T10:00:00Z",
                "progress":{"phase":"data","bytes":999,"bytes_total":776000000}}"#,
        )
        .expect("view");
        let line = status_line(&view);
        assert!(line.contains("| 999 B of ~740.05 MiB |"), "{line}");
    }

    #[test]
    fn a_job_on_its_second_worker_says_so_and_why() {
        let view = |status: &str| -> JobView {
            serde_json::from_str(&format!(
                r#"{{"job_id":"0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11","status":"{status}","command":"init",
                    "source_display":"s","target_display":"t","created_at":"2026-11-27T10:00:00Z",
                    "updated_at":"2026-11-27T10:00:00Z","attempt":2,"max_attempts":3,
                    "error":{{"code":"heartbeat_lost","message":"worker lost after 42 %: silent; resuming on attempt 2/3"}}}}"#
            ))
            .expect("view")
        };
        let line = status_line(&view("running"));
        assert!(
            line.contains("running (attempt 2/3)")
                && line.ends_with("| worker lost after 42 %: silent; resuming on attempt 2/3"),
            "{line}"
        );
        assert!(!line.contains("heartbeat_lost"), "not a failure: {line}");
        let line = status_line(&view("failed"));
        assert!(line.contains("| heartbeat_lost: worker lost"), "{line}");
        // An older record, without the attempt fields: the first attempt.
        let old: JobView = serde_json::from_str(
            r#"{"job_id":"0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11","status":"running","command":"init",
                "source_display":"s","target_display":"t","created_at":"2026-11-27T10:00:00Z",
                "updated_at":"2026-11-27T10:00:00Z"}"#,
        )
        .expect("old view");
        assert_eq!((old.attempt, old.max_attempts), (1, 1));
        assert!(!status_line(&old).contains("attempt"));
    }

    #[test]
    fn job_records_replay_as_engine_events() {
        let mut view: JobView = serde_json::from_str(
            r#"{"job_id":"0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11","status":"running","command":"init",
                "source_display":"s","target_display":"t","created_at":"2026-11-27T10:00:00Z",
                "updated_at":"2026-11-27T10:00:00Z","progress":{"phase":"pre-data"}}"#,
        )
        .expect("view");
        let mut r = Replay::default();
        assert_eq!(r.events(&view), vec![Event::PhaseStarted(Phase::PreData)]);
        assert!(r.events(&view).is_empty(), "nothing new");
        if let Some(p) = view.progress.as_mut() {
            "data".clone_into(&mut p.phase);
            p.units_total = 4;
            p.units_done = 1;
            p.tables_total = 3;
            p.bytes_total = 1000;
            p.bytes = 250;
        }
        let events = r.events(&view);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0], Event::PhaseStarted(Phase::Data));
        assert!(matches!(&events[1], Event::Planned(s) if s.units == 4 && s.tables == 3));
        assert!(
            matches!(&events[2], Event::Progress(d) if d.units_done == 1 && d.estimate_done == 250)
        );
        assert_eq!(r.events(&view).len(), 1, "progress again, no second plan");
        // The worker's warnings, each once, before the progress they came with.
        if let Some(p) = view.progress.as_mut() {
            p.warnings = vec!["first".into(), "second".into()];
        }
        let events = r.events(&view);
        assert_eq!(events[0], Event::Warning("first".into()));
        assert_eq!(events[1], Event::Warning("second".into()));
        assert_eq!(events.len(), 3);
        if let Some(p) = view.progress.as_mut() {
            p.warnings.push("third".into());
        }
        assert_eq!(r.events(&view)[0], Event::Warning("third".into()));
        assert_eq!(r.events(&view).len(), 1, "no warning twice");
        // Retries, each once, as a local run prints them.
        if let Some(p) = view.progress.as_mut() {
            p.add_retry("public.t", 2, "connection reset");
        }
        let events = r.events(&view);
        assert_eq!(
            events[0],
            Event::Retrying {
                what: "public.t".into(),
                attempt: 2,
                error: "connection reset".into()
            }
        );
        assert_eq!(r.events(&view).len(), 1, "no retry twice");
    }

    #[test]
    fn api_urls_and_keys_are_checked() {
        assert!(Api::new("ftp://x", "k").is_err());
        assert!(Api::new("https://x.example.com/", "").is_err());
        assert!(Api::new("https://x.example.com/", "k").is_ok());
    }
}

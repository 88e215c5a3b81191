//! The routes and their handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use job_model::api::{
    DryRunResponse, Health, JobView, ListResponse, SubmitRequest, SubmitResponse,
};
use job_model::job::is_valid_job_id;
use job_model::seal::Field;
use job_model::{
    Change, Created, Cursor, ErrorBody, Expect, Job, JobStatus, JobStore, Owner, Sealer, Secret,
    StoreError, Timestamp,
};
use serde::Deserialize;

use crate::auth::ApiKeys;
use crate::error::ApiError;
use crate::provision::Provisioner;
use crate::validate;

/// What the coordinator is allowed and told to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Active jobs at most (`None`: unlimited); more submits get 429.
    pub max_concurrent_jobs: Option<u32>,
    /// How long job records are kept (DynamoDB TTL).
    pub retention: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The instance types a job may ask for (`options.instance_type`); others get 400. The
    /// coordinator's IAM policy allows launching these only.
    pub allowed_instance_types: Vec<String>,
    /// The copy throughput a dry run's duration assumes, bytes of source database per second
    /// (see [`job_model::cost`]).
    pub estimate_throughput_bytes_per_sec: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_concurrent_jobs: Some(10),
            retention: job_model::job::DEFAULT_RETENTION,
            max_body_bytes: 64 * 1024,
            allowed_instance_types: validate::DEFAULT_ALLOWED_INSTANCE_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            estimate_throughput_bytes_per_sec: job_model::cost::DEFAULT_THROUGHPUT_BYTES_PER_SEC,
        }
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Jobs.
    pub store: Arc<dyn JobStore>,
    /// URL sealing.
    pub sealer: Arc<dyn Sealer>,
    /// Workers.
    pub provisioner: Arc<dyn Provisioner>,
    /// Accepted API keys.
    pub keys: ApiKeys,
    /// Limits.
    pub settings: Settings,
}

/// The API as one Router, served the same way by `lambda_http` and by axum.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/jobs", post(submit).get(list))
        .route("/estimates", post(estimate))
        .route("/jobs/{job_id}", get(show))
        .route("/jobs/{job_id}/cancel", post(cancel))
        .fallback(|| async { ApiError::not_found("no such route; see docs/api.md") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(
            state.settings.max_body_bytes,
        ))
        .with_state(state)
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<Owner, ApiError> {
    state
        .keys
        .caller(headers)
        .ok_or_else(ApiError::unauthorized)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

fn seal_error(e: &job_model::SealError) -> ApiError {
    match e {
        job_model::SealError::Backend {
            retryable: true, ..
        } => ApiError::unavailable(e),
        _ => ApiError::internal(e),
    }
}

/// The submit body, read and validated as `POST /jobs` and `POST /estimates` both read it.
fn submitted_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(SubmitRequest, validate::Valid), ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.settings.max_body_bytes)
        } else {
            ApiError::invalid(format!("request body: {}", r.body_text()))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the body must be a JSON object such as {\"command\":\"init\",\"source_url\":…,\"target_url\":…}",
        ));
    }
    let req: SubmitRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
    drop(body);
    let valid = validate::submit(&req, &state.settings.allowed_instance_types)?;
    Ok((req, valid))
}

/// `POST /estimates`: what a job with this body would run on and cost; nothing is sealed,
/// stored or launched. A route of its own, so that a coordinator without it answers 404
/// instead of starting the job.
async fn estimate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DryRunResponse>, ApiError> {
    let owner = caller(&state, &headers)?;
    let (req, valid) = submitted_body(&state, body)?;
    Ok(Json(dry_run(&state, owner, &req, &valid)?))
}

async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let owner = caller(&state, &headers)?;
    let (req, valid) = submitted_body(&state, body)?;
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be printable ASCII"))
                .and_then(validate::idempotency_key)
        })
        .transpose()?;

    let job_id = Job::new_id();
    let SubmitRequest {
        source_url,
        target_url,
        ..
    } = &req;
    let sealed_source = state
        .sealer
        .seal(&job_id, Field::SourceUrl, &Secret::new(source_url.as_str()))
        .await
        .map_err(|e| seal_error(&e))?;
    let sealed_target = state
        .sealer
        .seal(&job_id, Field::TargetUrl, &Secret::new(target_url.as_str()))
        .await
        .map_err(|e| seal_error(&e))?;
    let now = Timestamp::now();
    let job = Job::new(
        job_id,
        owner,
        req.spec(),
        (sealed_source, sealed_target),
        (valid.source.redacted(), valid.target.redacted()),
        idempotency_key,
        now,
        state.settings.retention,
    );
    drop(req);
    let job = match state
        .store
        .create(&job, state.settings.max_concurrent_jobs)
        .await
    {
        Ok(Created::Existing(j)) => {
            // The same key with another request is a client's mistake, not a retry (as the
            // IETF idempotency-key draft and Stripe answer it). Compared without the secrets,
            // which only the sealed blobs hold: command, options, filters and the URLs minus
            // their passwords.
            if j.spec != job.spec
                || j.source_display != job.source_display
                || j.target_display != job.target_display
            {
                return Err(ApiError::unprocessable(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for another request; send a new key for a \
                     new job, or the same request to get the job the key made",
                ));
            }
            return Ok((
                StatusCode::OK,
                Json(SubmitResponse {
                    job_id: j.job_id,
                    status: j.status,
                }),
            ));
        }
        Ok(Created::New(j)) => j,
        Err(StoreError::LimitReached { limit }) => {
            return Err(ApiError::too_many(
                format!(
                    "{limit} jobs are running already, the most this deployment allows at once; \
                     retry later or ask the operator to raise max_concurrent_jobs"
                ),
                30,
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let status = crate::provision::start_worker(&*state.store, &*state.provisioner, &job).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SubmitResponse {
            job_id: job.job_id,
            status,
        }),
    ))
}

/// What `req` would run on and cost: the instance the provisioner would ask for (the same
/// [`Provisioner::plan`] a launch follows) and [`job_model::cost::estimate`] of the copy.
fn dry_run(
    state: &AppState,
    owner: Owner,
    req: &SubmitRequest,
    valid: &validate::Valid,
) -> Result<DryRunResponse, ApiError> {
    if req.command != job_model::Command::Init {
        return Err(ApiError::invalid(format!(
            "estimates are for init jobs (a copy); a {} job is not estimated: submit it to \
             POST /jobs",
            req.command
        )));
    }
    // Never stored: the plan reads the spec only.
    let job = Job::new(
        Job::new_id(),
        owner,
        req.spec(),
        (Vec::new(), Vec::new()),
        (valid.source.redacted(), valid.target.redacted()),
        None,
        Timestamp::now(),
        state.settings.retention,
    );
    let plan = state.provisioner.plan(&job);
    Ok(DryRunResponse {
        dry_run: true,
        estimate: job_model::cost::estimate(
            &plan.instance_type,
            plan.market,
            req.options.source_size_bytes,
            state.settings.estimate_throughput_bytes_per_sec,
        ),
    })
}

/// The caller's job, or 404 for a job that does not exist or is someone else's.
async fn owned_job(state: &AppState, owner: &Owner, job_id: &str) -> Result<Job, ApiError> {
    if !is_valid_job_id(job_id) {
        return Err(ApiError::not_found("no such job"));
    }
    match state.store.get(job_id).await? {
        Some(j) if &j.owner == owner => Ok(j),
        _ => Err(ApiError::not_found("no such job")),
    }
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let owner = caller(&state, &headers)?;
    let job = owned_job(&state, &owner, &job_id).await?;
    Ok(Json(JobView::from(&job)))
}

/// `GET /jobs` query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The most jobs one page holds.
pub const MAX_PAGE: u32 = 100;

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    let owner = caller(&state, &headers)?;
    let Query(q) = query.map_err(|r| ApiError::invalid(format!("query: {}", r.body_text())))?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("status: {e}")))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit is {limit}; give 1 to {MAX_PAGE}"
        )));
    }
    let cursor = q.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page = state
        .store
        .list_by_owner(&owner, status, limit, cursor.as_ref())
        .await?;
    Ok(Json(ListResponse {
        jobs: page.jobs.iter().map(JobView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let owner = caller(&state, &headers)?;
    let job = owned_job(&state, &owner, &job_id).await?;
    if job.status.is_terminal() {
        return Err(ApiError::conflict(
            "already_finished",
            format!(
                "the job is {} already; there is nothing to cancel",
                job.status
            ),
        ));
    }
    let now = Timestamp::now();
    let mut job = match state.store.request_cancel(&job.job_id, now).await {
        Ok(j) => j,
        Err(StoreError::Conflict { current, .. }) => {
            return Err(ApiError::conflict(
                "already_finished",
                format!("the job is {current} already; there is nothing to cancel"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    // No worker is running it yet: cancel it here. A running worker sees the request at its
    // next heartbeat, stops, and records `cancelled` itself; the reaper steps in if it does not.
    if matches!(job.status, JobStatus::Pending | JobStatus::Provisioning) {
        let change = Change::to(JobStatus::Cancelled, now).error(ErrorBody::new(
            "cancelled",
            "cancelled by its owner before it started",
        ));
        match state
            .store
            .transition(&job.job_id, Expect::status(job.status), change)
            .await
        {
            Ok(j) => {
                job = j;
                if let Err(e) = state.provisioner.terminate(&job.job_id).await {
                    tracing::warn!(job_id = %job.job_id, error = %e, "terminate after cancel; the reaper will retry");
                }
            }
            Err(StoreError::Conflict { .. }) => {
                if let Some(j) = state.store.get(&job.job_id).await? {
                    job = j;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((StatusCode::ACCEPTED, Json(JobView::from(&job))))
}

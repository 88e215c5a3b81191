//! The API's one error type: renders `{"error":{"code","message"}}` with its status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use job_model::api::ErrorResponse;
use job_model::ErrorBody;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// One line for people.
    pub message: String,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed; the message says what to fix.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API key; send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
        )
    }

    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not take that method; see docs/api.md",
        )
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422: a well-formed request that cannot be done as asked.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over {limit} bytes"),
        )
    }

    /// 429 with `Retry-After`.
    pub fn too_many(message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_jobs", message)
        }
    }

    /// 503 with `Retry-After`: a dependency is throttling or down; the request can be retried.
    pub fn unavailable(detail: &dyn std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        tracing::warn!(request_error_id = %id, error = %detail, "dependency unavailable");
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("a backing service is busy; retry shortly (error id {id})"),
            )
        }
    }

    /// 500: the detail is logged with an id, and only the id is returned.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        tracing::error!(request_error_id = %id, error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (error id {id}); the operator's logs have the details"),
        )
    }
}

impl From<job_model::StoreError> for ApiError {
    fn from(e: job_model::StoreError) -> Self {
        use job_model::StoreError as E;
        match &e {
            E::NotFound(_) => Self::not_found("no such job"),
            E::BadCursor => Self::invalid(e.to_string()),
            E::LimitReached { .. } => Self::too_many(e.to_string(), 30),
            E::Conflict { .. } | E::Illegal { .. } => Self::conflict("conflict", e.to_string()),
            E::Backend {
                retryable: true, ..
            } => Self::unavailable(&e),
            E::Backend { .. } | E::Corrupt { .. } => Self::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorBody::new(self.code, self.message),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

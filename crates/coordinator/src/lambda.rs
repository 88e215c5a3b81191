//! Serving the Router in Lambda: API Gateway events (HTTP API payload 2.0 and REST payload
//! 1.0) become requests through `lambda_http`, and reach the same handlers as over axum.
//!
//! `lambda_http` puts a named stage in front of the path (`/prod/jobs`); the Router's routes
//! have none, so the stage is taken off here. The HTTP API's `$default` stage has no prefix.

use axum::http::Uri;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt as _;

/// `req` with its API Gateway stage prefix removed from the path.
pub fn strip_stage(mut req: lambda_http::Request) -> lambda_http::Request {
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(c)) => c.stage.clone(),
        Some(RequestContext::ApiGatewayV2(c)) => c.stage.clone(),
        _ => None,
    };
    let Some(stage) = stage.filter(|s| !s.is_empty() && s != "$default") else {
        return req;
    };
    let prefix = format!("/{stage}");
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix(&prefix) else {
        return req;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return req;
    }
    let rest = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Run `router` as the Lambda function's handler.
///
/// # Errors
/// When the Lambda runtime fails.
pub async fn run(router: axum::Router) -> Result<(), lambda_http::Error> {
    let service = tower::ServiceBuilder::new()
        .map_request(strip_stage)
        .service(router);
    lambda_http::run(service).await
}

//! Recorded API Gateway events (HTTP API payload 2.0, REST payload 1.0 with a named stage)
//! through `lambda_http`'s request conversion reach the same handlers as direct requests.

mod common;

use axum::http::StatusCode;
use common::*;
use coordinator::lambda::strip_stage;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

async fn feed(f: &Fixture, event_file: &str) -> Answer {
    let path = format!(
        "{}/tests/events/{event_file}",
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
    );
    let text = std::fs::read_to_string(&path).expect("event file");
    let req = lambda_http::request::from_str(&text).expect("a valid API Gateway event");
    let resp = f
        .router
        .clone()
        .oneshot(strip_stage(req))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

#[tokio::test]
async fn http_api_events_reach_the_handlers() {
    let f = fixture();
    let submitted = feed(&f, "http-api-v2-submit.json").await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED, "{}", submitted.body);
    let id = submitted.json()["job_id"].as_str().expect("id").to_owned();
    // The same event again: its Idempotency-Key returns the same job.
    let again = feed(&f, "http-api-v2-submit.json").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["job_id"], id.as_str());

    let listed = feed(&f, "http-api-v2-list.json").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let jobs = listed.json()["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["job_id"], id.as_str());
    assert_eq!(
        jobs[0]["source_display"],
        "postgresql://app@src.example.com:5432/shop"
    );
    assert!(!listed.body.contains("s3cr"));
    // The same listing asked directly gives the same answer.
    let direct = call(
        &f.router,
        request(
            "GET",
            "/jobs?status=provisioning&limit=5",
            Some(KEY_A),
            None,
        ),
    )
    .await;
    assert_eq!(direct.json(), listed.json());

    let unknown = feed(&f, "http-api-v2-get-unknown.json").await;
    assert_eq!(
        (unknown.status, unknown.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    f.state.provisioner.terminate(&id).await.expect("cleanup");
}

#[tokio::test]
async fn rest_api_events_with_a_stage_reach_the_handlers() {
    let f = fixture();
    let health = feed(&f, "rest-v1-health.json").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.json()["status"], "ok");
    let submitted = feed(&f, "rest-v1-submit.json").await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED, "{}", submitted.body);
    let id = submitted.json()["job_id"].as_str().expect("id").to_owned();
    let shown = call(
        &f.router,
        request("GET", &format!("/jobs/{id}"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(shown.json()["command"], "validate");
    f.state.provisioner.terminate(&id).await.expect("cleanup");
}

//! The API through `Router::oneshot`: every route and every error status, with the real SQLite
//! store, key-file sealer and local worker processes.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use coordinator::Settings;
use job_model::JobStatus;

async fn submit(f: &Fixture, key: &str, host: &str) -> String {
    let a = call(
        &f.router,
        request("POST", "/jobs", Some(key), Some(&submit_body(host))),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    a.json()["job_id"].as_str().expect("job_id").to_owned()
}

#[tokio::test]
async fn health_answers_without_a_key() {
    let f = fixture();
    let a = call(&f.router, request("GET", "/health", None, None)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["status"], "ok");
}

#[tokio::test]
async fn a_submitted_job_is_provisioned_and_shown_without_secrets() {
    let f = fixture();
    let a = call(
        &f.router,
        request(
            "POST",
            "/jobs",
            Some(KEY_A),
            Some(&submit_body("src.example.com")),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.json()["status"], "provisioning");
    let id = a.json()["job_id"].as_str().expect("id").to_owned();

    let shown = call(
        &f.router,
        request("GET", &format!("/jobs/{id}"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(shown.status, StatusCode::OK);
    let v = shown.json();
    assert_eq!(v["status"], "provisioning");
    assert_eq!(v["command"], "init");
    assert_eq!(
        v["source_display"],
        "postgresql://app@src.example.com:5432/shop"
    );
    assert_eq!(
        v["target_display"],
        "postgresql://app@[2001:db8::7]:5433/shop?sslmode=require"
    );
    assert_eq!(v["options"]["jobs"], 4);
    assert!(v["instance_id"]
        .as_str()
        .is_some_and(|i| i.starts_with("local-")));
    // The worker is in the record, with what it costs (nothing: a local process).
    let workers = v["usage"]["workers"].as_array().expect("usage.workers");
    assert_eq!(workers.len(), 1, "{v}");
    assert_eq!(workers[0]["instance_id"], v["instance_id"]);
    assert_eq!(workers[0]["market"], "local");
    assert_eq!(v["usage"]["ongoing"], true);
    assert_eq!(v["usage"]["cost_usd"], 0.0);
    for text in [&a.body, &shown.body] {
        assert!(
            !text.contains("pw%3B") && !text.contains("reboot"),
            "{text}"
        );
    }
    // The record itself: sealed, not plaintext.
    let job = f.state.store.get(&id).await.expect("get").expect("job");
    for blob in [&job.source_secret, &job.target_secret] {
        assert!(!String::from_utf8_lossy(blob).contains("reboot"));
    }
    let source = f
        .state
        .sealer
        .open(&id, job_model::seal::Field::SourceUrl, &job.source_secret)
        .await
        .expect("open");
    assert!(source.expose().contains(PASSWORD_ENC));
    let raw = std::fs::read(f.dir.path().join("jobs.db")).expect("db file");
    assert!(!String::from_utf8_lossy(&raw).contains("reboot"));
    // One worker runs for it.
    let workers = f.state.provisioner.list().await.expect("list");
    assert_eq!(
        workers
            .iter()
            .filter(|w| w.job_id.as_deref() == Some(&id))
            .count(),
        1
    );
    f.state.provisioner.terminate(&id).await.expect("cleanup");
}

#[tokio::test]
async fn a_dry_run_estimates_and_starts_nothing() {
    let f = fixture();
    let sized = submit_body("src.example.com").replace(
        r#""options":{"jobs":4}"#,
        r#""options":{"jobs":4,"source_size_bytes":6000000000}"#,
    );
    let a = call(
        &f.router,
        request("POST", "/estimates", Some(KEY_A), Some(&sized)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    assert_eq!(v["dry_run"], true);
    let e = &v["estimate"];
    // A local stack's worker is a process: no boot, no price; 6 GB at the default 60 MB/s.
    assert_eq!(e["instance_type"], "local", "{e}");
    assert_eq!(e["market"], "local");
    assert_eq!(e["source_size_bytes"], 6_000_000_000_u64);
    assert_eq!(e["copy_seconds"], 100);
    assert_eq!(e["on_demand_usd"], 0.0);
    assert!(
        !a.body.contains("reboot") && !a.body.contains("pw%3B"),
        "{}",
        a.body
    );
    // Nothing stored, nothing started.
    let listed = call(&f.router, request("GET", "/jobs", Some(KEY_A), None)).await;
    assert_eq!(listed.json()["jobs"], serde_json::json!([]));
    assert!(f.state.provisioner.list().await.expect("list").is_empty());

    // Validated as a submit is; init only; unknown query parameters named.
    let bad = sized.replace(r#""jobs":4"#, r#""jobs":0"#);
    let a = call(
        &f.router,
        request("POST", "/estimates", Some(KEY_A), Some(&bad)),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    let verify = sized.replace(r#""command":"init""#, r#""command":"verify""#);
    let a = call(
        &f.router,
        request("POST", "/estimates", Some(KEY_A), Some(&verify)),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body.contains("estimates are for init jobs"), "{}", a.body);
    // Without a key, no estimate either.
    let a = call(&f.router, request("POST", "/estimates", None, Some(&sized))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // The same body submitted starts the job.
    let a = call(
        &f.router,
        request("POST", "/jobs", Some(KEY_A), Some(&sized)),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.json()["job_id"].as_str().expect("id").to_owned();
    f.state.provisioner.terminate(&id).await.expect("cleanup");
}

#[tokio::test]
async fn the_key_may_come_as_x_api_key_and_jobs_belong_to_their_key() {
    let f = fixture();
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/jobs")
        .header("x-api-key", KEY_A)
        .body(axum::body::Body::from(submit_body("h1")))
        .expect("request");
    let a = call(&f.router, req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.json()["job_id"].as_str().expect("id").to_owned();
    // Another key sees nothing: 404, not 403, so ids do not leak.
    let b = call(
        &f.router,
        request("GET", &format!("/jobs/{id}"), Some(KEY_B), None),
    )
    .await;
    assert_eq!(
        (b.status, b.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let c = call(
        &f.router,
        request("POST", &format!("/jobs/{id}/cancel"), Some(KEY_B), None),
    )
    .await;
    assert_eq!(c.status, StatusCode::NOT_FOUND);
    let l = call(&f.router, request("GET", "/jobs", Some(KEY_B), None)).await;
    assert_eq!(l.json()["jobs"].as_array().map(Vec::len), Some(0));
    f.state.provisioner.terminate(&id).await.expect("cleanup");
}

#[tokio::test]
async fn missing_or_unknown_keys_get_401() {
    let f = fixture();
    for (key, uri, method) in [
        (None, "/jobs", "GET"),
        (Some("sk-wrong"), "/jobs", "GET"),
        (None, "/jobs", "POST"),
        (
            Some(""),
            "/jobs/0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11",
            "GET",
        ),
        (
            Some("sk-wrong"),
            "/jobs/0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11/cancel",
            "POST",
        ),
    ] {
        let a = call(
            &f.router,
            request(method, uri, key, Some(&submit_body("h"))),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(a.error_code(), "unauthorized");
        assert_eq!(
            a.headers.get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_problem() {
    let f = fixture();
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "must be a JSON object"),
        ("{".into(), "request body"),
        ("[1,2]".into(), "request body"),
        (r#"{"command":"init"}"#.into(), "missing field `source_url`"),
        (r#"{"command":"drop","source_url":"x","target_url":"y"}"#.into(), "unknown variant `drop`"),
        (
            r#"{"command":"init","source_url":"postgresql://u@a/db","target_url":"postgresql://u@b/db","turbo":true}"#.into(),
            "unknown field `turbo`",
        ),
        (
            r#"{"command":"init","source_url":"postgresql://u@a/db","target_url":"postgresql://u@b/db","options":{"jobz":3}}"#.into(),
            "unknown field `jobz`",
        ),
        (
            format!(r#"{{"command":"init","source_url":"postgresql://u:{PASSWORD_ENC}@a/db?sslmode=maybe","target_url":"postgresql://u@b/db"}}"#),
            "source_url: sslmode",
        ),
        (
            r#"{"command":"init","source_url":"postgresql://u@a/db","target_url":"ftp://b/db"}"#.into(),
            "target_url: must start with postgresql://",
        ),
        (
            r#"{"command":"init","source_url":"postgresql://u@a/db","target_url":"postgresql://u@b/db","options":{"jobs":0}}"#.into(),
            "options.jobs",
        ),
        // No host: stored as localhost, a worker would have connected to itself.
        (
            format!(r#"{{"command":"init","source_url":"postgresql://u:{PASSWORD_ENC}@/db","target_url":"postgresql://u@b/db"}}"#),
            "source_url: names no host",
        ),
        (
            r#"{"command":"init","source_url":"postgresql://u@a/db","target_url":"postgresql://u:pw@:5432/db"}"#.into(),
            "target_url: names no host",
        ),
    ];
    for (body, want) in cases {
        let a = call(
            &f.router,
            request("POST", "/jobs", Some(KEY_A), Some(&body)),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert_eq!(a.error_code(), "invalid_request");
        let msg = a.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(msg.contains(want), "{body}: {msg}");
        assert!(!msg.contains("pw%3B") && !msg.contains("reboot"), "{msg}");
    }
    let bad_key = axum::http::Request::builder()
        .method("POST")
        .uri("/jobs")
        .header("authorization", format!("Bearer {KEY_A}"))
        .header("idempotency-key", "has space")
        .body(axum::body::Body::from(submit_body("h")))
        .expect("request");
    assert_eq!(
        call(&f.router, bad_key).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let f = fixture();
    let big = format!(
        r#"{{"command":"init","source_url":"postgresql://u@a/db","target_url":"postgresql://u@b/db","filter":{{"include_tables":["{}"]}}}}"#,
        "x".repeat(100 * 1024)
    );
    let a = call(&f.router, request("POST", "/jobs", Some(KEY_A), Some(&big))).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert_eq!(a.error_code(), "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_get_json_404_and_405() {
    let f = fixture();
    let a = call(&f.router, request("GET", "/nope", Some(KEY_A), None)).await;
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let not_found = a.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let a = call(&f.router, request("DELETE", "/jobs", Some(KEY_A), None)).await;
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    // The document both messages send the caller to exists in the repository.
    let not_allowed = a.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for message in [not_found, not_allowed] {
        let doc = message
            .split_whitespace()
            .find(|w| w.starts_with("docs/"))
            .unwrap_or_else(|| panic!("a document named in {message:?}"));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(doc);
        assert!(
            path.is_file(),
            "{message:?} names {doc}, which does not exist"
        );
    }
    for id in [
        "not-a-uuid",
        "..%2F..%2Fetc",
        "0B6F8A52-2A8E-4E43-9D8E-5B0D5C0F8E11",
        "0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11",
    ] {
        let a = call(
            &f.router,
            request("GET", &format!("/jobs/{id}"), Some(KEY_A), None),
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{id}");
    }
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_same_job_and_one_worker() {
    let f = fixture();
    let send_body = |body: String| {
        axum::http::Request::builder()
            .method("POST")
            .uri("/jobs")
            .header("authorization", format!("Bearer {KEY_A}"))
            .header("idempotency-key", "7d2f-retry-1")
            .body(axum::body::Body::from(body))
            .expect("request")
    };
    let send = || send_body(submit_body("h"));
    let first = call(&f.router, send()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let second = call(&f.router, send()).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let id = first.json()["job_id"].as_str().expect("id").to_owned();
    assert_eq!(second.json()["job_id"], first.json()["job_id"]);
    // The same key with another request: 422, and no second job.
    let other = call(&f.router, send_body(submit_body("another-host"))).await;
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        "{}",
        other.body
    );
    let workers = f.state.provisioner.list().await.expect("list");
    assert_eq!(workers.len(), 1);
    let l = call(&f.router, request("GET", "/jobs", Some(KEY_A), None)).await;
    assert_eq!(l.json()["jobs"].as_array().map(Vec::len), Some(1));
    f.state.provisioner.terminate(&id).await.expect("cleanup");
}

#[tokio::test]
async fn the_concurrency_limit_answers_429_with_retry_after() {
    let f = fixture_with(
        Settings {
            max_concurrent_jobs: Some(2),
            ..Settings::default()
        },
        "sleep",
    );
    let a = submit(&f, KEY_A, "h1").await;
    let b = submit(&f, KEY_B, "h2").await;
    let c = call(
        &f.router,
        request("POST", "/jobs", Some(KEY_A), Some(&submit_body("h3"))),
    )
    .await;
    assert_eq!(c.status, StatusCode::TOO_MANY_REQUESTS, "{}", c.body);
    assert_eq!(c.error_code(), "too_many_jobs");
    assert_eq!(
        c.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"30"[..])
    );
    // Cancelling one frees a slot.
    let x = call(
        &f.router,
        request("POST", &format!("/jobs/{a}/cancel"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(x.status, StatusCode::ACCEPTED);
    let d = submit(&f, KEY_A, "h4").await;
    for id in [a, b, d] {
        f.state.provisioner.terminate(&id).await.expect("cleanup");
    }
}

#[tokio::test]
async fn listing_pages_newest_first_and_filters_by_status() {
    let f = fixture();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&f, KEY_A, &format!("h{i}")).await);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let cancelled = call(
        &f.router,
        request(
            "POST",
            &format!("/jobs/{}/cancel", ids[0]),
            Some(KEY_A),
            None,
        ),
    )
    .await;
    assert_eq!(cancelled.json()["status"], "cancelled");

    let mut seen = Vec::new();
    let mut uri = "/jobs?limit=2".to_owned();
    loop {
        let page = call(&f.router, request("GET", &uri, Some(KEY_A), None)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let v = page.json();
        seen.extend(
            v["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["job_id"].as_str().unwrap_or_default().to_owned()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => uri = format!("/jobs?limit=2&cursor={c}"),
            None => break,
        }
    }
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let only = call(
        &f.router,
        request("GET", "/jobs?status=cancelled", Some(KEY_A), None),
    )
    .await;
    let jobs = only.json()["jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["job_id"], ids[0].as_str());
    for (uri, want) in [
        ("/jobs?status=done", "unknown job status 'done'"),
        ("/jobs?limit=0", "limit is 0"),
        ("/jobs?limit=1000", "limit is 1000"),
        ("/jobs?limit=x", "query"),
        ("/jobs?cursor=zzz", "cursor"),
        ("/jobs?sort=asc", "unknown field `sort`"),
    ] {
        let a = call(&f.router, request("GET", uri, Some(KEY_A), None)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.body);
        assert!(a.body.contains(want), "{uri}: {}", a.body);
    }
    for id in ids {
        f.state.provisioner.terminate(&id).await.expect("cleanup");
    }
}

#[tokio::test]
async fn cancel_stops_a_job_not_yet_running_and_refuses_a_finished_one() {
    let f = fixture();
    let id = submit(&f, KEY_A, "h").await;
    let a = call(
        &f.router,
        request("POST", &format!("/jobs/{id}/cancel"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.json()["status"], "cancelled");
    assert!(a.json()["cancel_requested_at"].is_string());
    // Its worker is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(f.state.provisioner.list().await.expect("list").is_empty());
    let again = call(
        &f.router,
        request("POST", &format!("/jobs/{id}/cancel"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (StatusCode::CONFLICT, "already_finished")
    );
}

#[tokio::test]
async fn cancelling_a_running_job_asks_its_worker_to_stop() {
    let f = fixture();
    let id = submit(&f, KEY_A, "h").await;
    let job = f.state.store.get(&id).await.expect("get").expect("job");
    let instance = job.instance_id.clone().expect("instance");
    // The worker claims it.
    f.state
        .store
        .transition(
            &id,
            job_model::Expect::status(JobStatus::Provisioning),
            job_model::Change::to(JobStatus::Running, job_model::Timestamp::now())
                .instance(&instance),
        )
        .await
        .expect("claim");
    let a = call(
        &f.router,
        request("POST", &format!("/jobs/{id}/cancel"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json()["status"], "running");
    // The worker's next heartbeat carries the request.
    let hb = f
        .state
        .store
        .heartbeat(&id, &instance, None, job_model::Timestamp::now())
        .await
        .expect("heartbeat");
    assert!(hb.cancel_requested_at.is_some());
    f.state.provisioner.terminate(&id).await.expect("cleanup");
}

#[tokio::test]
async fn a_worker_that_cannot_start_fails_the_job_with_a_reason() {
    let f = fixture_with(Settings::default(), "/nonexistent/seren-worker");
    let a = call(
        &f.router,
        request("POST", "/jobs", Some(KEY_A), Some(&submit_body("h"))),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.json()["status"], "failed");
    let id = a.json()["job_id"].as_str().expect("id").to_owned();
    let shown = call(
        &f.router,
        request("GET", &format!("/jobs/{id}"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(shown.json()["error"]["code"], "provisioning_failed");
    assert!(shown.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("/nonexistent/seren-worker")));
}

#[tokio::test]
async fn no_input_makes_it_answer_5xx() {
    let f = fixture();
    let bodies = [
        "null", "0", "\"\"", "{}", "{\"command\":null}", "{\"command\":\"init\",\"source_url\":1}",
        "\u{0}\u{1}", "{\"command\":\"init\",\"source_url\":\"postgresql://[::1\",\"target_url\":\"postgresql://u@b/db\"}",
        "{\"command\":\"init\",\"source_url\":\"postgresql://u@a:99999/db\",\"target_url\":\"postgresql://u@b/db\"}",
        "{\"command\":\"init\",\"source_url\":\"postgresql://u@a/db\",\"target_url\":\"postgresql://u@b/db\",\"filter\":{\"table_filters\":[\":\"]}}",
    ];
    for body in bodies {
        let a = call(&f.router, request("POST", "/jobs", Some(KEY_A), Some(body))).await;
        assert!(
            a.status.is_client_error(),
            "{body}: {} {}",
            a.status,
            a.body
        );
        let _ = a.json();
    }
    for uri in [
        "/jobs/%00",
        "/jobs/a/b/c",
        "/jobs?status=%ff",
        "/jobs?cursor=%00%00",
        "//jobs",
        "/jobs/",
    ] {
        let a = call(&f.router, request("GET", uri, Some(KEY_A), None)).await;
        assert!(a.status.is_client_error(), "{uri}: {} {}", a.status, a.body);
    }
}

/// Everything the coordinator logs while handling submits, failures and cancels.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_password_reaches_the_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let ok = fixture();
    let id = submit(&ok, KEY_A, "h").await;
    call(
        &ok.router,
        request("POST", &format!("/jobs/{id}/cancel"), Some(KEY_A), None),
    )
    .await;
    let failing = fixture_with(Settings::default(), "/nonexistent/worker");
    call(
        &failing.router,
        request("POST", "/jobs", Some(KEY_A), Some(&submit_body("h"))),
    )
    .await;
    let bad = format!(
        r#"{{"command":"init","source_url":"postgresql://u:{PASSWORD_ENC}@a/db?sslmode=no","target_url":"postgresql://u@b/db"}}"#
    );
    call(
        &ok.router,
        request("POST", "/jobs", Some(KEY_A), Some(&bad)),
    )
    .await;

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(logs.contains(&id), "the log should mention the job: {logs}");
    for needle in [PASSWORD_ENC, PASSWORD, "reboot", KEY_A] {
        assert!(!logs.contains(needle), "{needle} in logs:\n{logs}");
    }
}

/// A store whose backend is down: the fault a test injects through the port.
#[derive(Debug)]
struct Broken {
    retryable: bool,
}

#[async_trait::async_trait]
impl job_model::JobStore for Broken {
    async fn create(
        &self,
        _: &job_model::Job,
        _: Option<u32>,
    ) -> Result<job_model::Created, job_model::StoreError> {
        Err(self.err())
    }
    async fn get(&self, _: &str) -> Result<Option<job_model::Job>, job_model::StoreError> {
        Err(self.err())
    }
    async fn list_by_owner(
        &self,
        _: &job_model::Owner,
        _: Option<JobStatus>,
        _: u32,
        _: Option<&job_model::Cursor>,
    ) -> Result<job_model::Page, job_model::StoreError> {
        Err(self.err())
    }
    async fn list_by_status(
        &self,
        _: JobStatus,
        _: u32,
        _: Option<&job_model::Cursor>,
    ) -> Result<job_model::Page, job_model::StoreError> {
        Err(self.err())
    }
    async fn transition(
        &self,
        _: &str,
        _: job_model::Expect,
        _: job_model::Change,
    ) -> Result<job_model::Job, job_model::StoreError> {
        Err(self.err())
    }
    async fn heartbeat(
        &self,
        _: &str,
        _: &str,
        _: Option<&job_model::Progress>,
        _: job_model::Timestamp,
    ) -> Result<job_model::Job, job_model::StoreError> {
        Err(self.err())
    }
    async fn request_cancel(
        &self,
        _: &str,
        _: job_model::Timestamp,
    ) -> Result<job_model::Job, job_model::StoreError> {
        Err(self.err())
    }
}

impl Broken {
    fn err(&self) -> job_model::StoreError {
        job_model::StoreError::Backend {
            message:
                "DynamoDB Query: ThrottlingException at arn:aws:dynamodb:secret-internal-detail"
                    .into(),
            retryable: self.retryable,
        }
    }
}

#[tokio::test]
async fn a_failing_store_gives_503_or_500_without_internals() {
    for (retryable, status, code) in [
        (true, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (false, StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    ] {
        let mut f = fixture();
        f.state.store = std::sync::Arc::new(Broken { retryable });
        let router = coordinator::app(f.state.clone());
        for req in [
            request("GET", "/jobs", Some(KEY_A), None),
            request(
                "GET",
                "/jobs/0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11",
                Some(KEY_A),
                None,
            ),
            request("POST", "/jobs", Some(KEY_A), Some(&submit_body("h"))),
        ] {
            let a = call(&router, req).await;
            assert_eq!(
                (a.status, a.error_code().as_str()),
                (status, code),
                "{}",
                a.body
            );
            assert!(a.body.contains("error id"), "{}", a.body);
            assert!(!a.body.contains("secret-internal-detail"), "{}", a.body);
            assert_eq!(a.headers.contains_key("retry-after"), retryable);
        }
    }
}

//! docs/openapi.json and the Router agree: every documented operation is served, every other
//! method on a documented path is 405, and the documented schemas have exactly the fields of
//! the wire types in job-model.

mod common;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use common::*;
use job_model::api::{JobView, SubmitRequest};
use job_model::{Command, ErrorBody, FilterSpec, Job, JobStatus, Options, Progress, Timestamp};
use serde_json::Value;

fn doc() -> Value {
    let path = format!(
        "{}/../../docs/openapi.json",
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json"))
        .expect("docs/openapi.json is JSON")
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[tokio::test]
async fn every_documented_operation_is_served_and_nothing_else() {
    let f = fixture();
    let d = doc();
    assert!(d["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = d["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, ops) in paths {
        let uri = path.replace("{job_id}", &Job::new_id());
        for method in METHODS {
            let body = (method == "post").then(|| submit_body("h"));
            let a = call(
                &f.router,
                request(&method.to_uppercase(), &uri, Some(KEY_A), body.as_deref()),
            )
            .await;
            if ops.get(method).is_some() {
                documented.insert(format!("{method} {path}"));
                let fallback =
                    a.status == StatusCode::METHOD_NOT_ALLOWED || a.body.contains("no such route");
                assert!(
                    !fallback,
                    "{method} {path} is documented but not routed: {}",
                    a.body
                );
                let codes: BTreeSet<u16> = ops[method]["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .map(|k| k.parse().expect("status code"))
                    .collect();
                assert!(
                    codes.contains(&a.status.as_u16()),
                    "{method} {path} answered {} which is not documented",
                    a.status
                );
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented but answered"
                );
            }
        }
    }
    let expected: BTreeSet<String> = [
        "get /health",
        "post /jobs",
        "post /estimates",
        "get /jobs",
        "get /jobs/{job_id}",
        "post /jobs/{job_id}/cancel",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(documented, expected);
    for w in f.state.provisioner.list().await.expect("list") {
        f.state
            .provisioner
            .terminate_instance(&w.instance_id)
            .await
            .expect("cleanup");
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn schema_props(name: &str) -> BTreeSet<String> {
    keys(&doc()["components"]["schemas"][name]["properties"])
}

#[test]
fn documented_schemas_match_the_wire_types() {
    let options = Options {
        jobs: Some(1),
        drop_existing: true,
        no_owner: true,
        no_privileges: true,
        instance_type: Some("t".into()),
        source_size_bytes: Some(1),
        timeout_seconds: Some(1),
        chunk_rows: Some(1),
        catch_up_timeout_seconds: Some(1),
        copy_format: Some(job_model::CopyFormat::Text),
        split_tables_larger_than_bytes: Some(1),
        max_parts: Some(1),
        retries: Some(1),
        maintenance_work_mem: Some("1GB".into()),
        sync: Some(job_model::SyncChoice::Auto),
        max_attempts: Some(2),
    };
    let filter = FilterSpec {
        include_tables: vec!["a".into()],
        ..FilterSpec::default()
    };
    assert_eq!(
        keys(&serde_json::to_value(&options).expect("options")),
        schema_props("Options")
    );
    assert_eq!(
        keys(&serde_json::to_value(&filter).expect("filter")),
        schema_props("FilterSpec")
    );
    let submit = SubmitRequest {
        command: Command::Init,
        source_url: String::new(),
        target_url: String::new(),
        options: options.clone(),
        filter: filter.clone(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&submit).expect("submit")),
        schema_props("SubmitRequest")
    );
    let progress = Progress {
        eta_seconds: Some(1),
        warnings: vec!["w".into()],
        retries: vec![job_model::Retry::default()],
        ..Progress::default()
    };
    assert_eq!(
        keys(&serde_json::to_value(&progress).expect("progress")),
        schema_props("Progress")
    );
    let t = Timestamp::now();
    let worker = job_model::cost::WorkerUsage {
        run: job_model::WorkerRun {
            instance_id: "i".into(),
            instance_type: "t3.medium".into(),
            market: job_model::Market::OnDemand,
            on_demand_because: Some("spot capacity refused".into()),
            launched_at: t,
        },
        ended_at: Some(t),
        billed_seconds: 60,
        cost_usd: Some(0.001),
    };
    assert_eq!(
        keys(&serde_json::to_value(&worker).expect("worker")),
        schema_props("WorkerUsage")
    );
    let usage = job_model::cost::Usage {
        workers: vec![worker],
        instance_hours: 1.0,
        cost_usd: Some(1.0),
        ongoing: false,
        prices: String::new(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&usage).expect("usage")),
        schema_props("Usage")
    );
    let estimate =
        job_model::cost::estimate("c5.xlarge", job_model::Market::Spot, Some(1 << 30), 1);
    assert_eq!(
        keys(&serde_json::to_value(&estimate).expect("estimate")),
        schema_props("Estimate")
    );
    let dry = job_model::api::DryRunResponse {
        dry_run: true,
        estimate,
    };
    assert_eq!(
        keys(&serde_json::to_value(&dry).expect("dry run")),
        schema_props("DryRunResponse")
    );
    let markets: BTreeSet<String> = doc()["components"]["schemas"]["Market"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let ours: BTreeSet<String> = [
        job_model::Market::Spot,
        job_model::Market::OnDemand,
        job_model::Market::Local,
    ]
    .iter()
    .map(|m| {
        serde_json::to_value(m)
            .expect("market")
            .as_str()
            .expect("text")
            .to_owned()
    })
    .collect();
    assert_eq!(markets, ours);
    let view = JobView {
        job_id: Job::new_id(),
        status: JobStatus::Running,
        command: Command::Init,
        filter,
        options,
        source_display: String::new(),
        target_display: String::new(),
        created_at: t,
        updated_at: t,
        started_at: Some(t),
        finished_at: Some(t),
        heartbeat_at: Some(t),
        cancel_requested_at: Some(t),
        instance_id: Some("i".into()),
        progress: Some(progress),
        error: Some(ErrorBody::new("c", "m")),
        result: Some(
            serde_json::from_value(serde_json::json!({"ok": true, "checks": []})).expect("report"),
        ),
        attempt: 2,
        max_attempts: 3,
        usage: Some(usage.clone()),
    };
    assert_eq!(
        keys(&serde_json::to_value(&view).expect("view")),
        schema_props("JobView")
    );
    let statuses: BTreeSet<String> = doc()["components"]["schemas"]["JobStatus"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let ours: BTreeSet<String> = JobStatus::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(statuses, ours);
}

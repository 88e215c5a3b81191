//! The AWS path end to end on moto's server: the coordinator's Router on DynamoDB + KMS + the
//! EC2 provisioner, and a small stand-in for the EC2 fleet that notices each pending instance,
//! runs a real `seren-worker` process with the instance's user data (as the AMI's systemd unit
//! would), and terminates the instance in moto when the worker powers off.
//!
//! Checks: the job ends `completed`, the target equals the source, no instance is left running,
//! the job item carries `ttl`, and no item holds the password in plaintext.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use coordinator::provision::ec2::{parse_user_data, Ec2Config, Ec2Provisioner};
use coordinator::{app, hash_key, ApiKeys, AppState, Settings};
use http_body_util::BodyExt as _;
use job_model::seal::KmsSealer;
use job_model::store::dynamodb::DynamoStore;
use pg_harness::{bindir, Cluster};
use tower::ServiceExt as _;

const KEY: &str = "sk-e2e-moto";

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {KEY}"))
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Plays the EC2 fleet: one worker process per running instance tagged ManagedBy.
struct Fleet {
    ec2: aws_sdk_ec2::Client,
    endpoint: String,
    started: HashSet<String>,
    running: Vec<(String, Child)>,
}

impl Fleet {
    async fn step(&mut self) {
        let out = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:ManagedBy")
                    .values("seren-replication-system")
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .expect("describe");
        for inst in out.reservations().iter().flat_map(|r| r.instances()) {
            let id = inst.instance_id().unwrap_or_default().to_owned();
            if !self.started.insert(id.clone()) {
                continue;
            }
            let script = moto_harness::ec2::user_data(&self.ec2, &id).await;
            let env = parse_user_data(&script);
            // What the AMI's unit adds: the instance id (IMDS there), AWS from the instance
            // profile (moto here), and power-off at the end (observed here as the exit).
            let child = Command::new(env!("CARGO_BIN_EXE_seren-worker"))
                .envs(env)
                .env("SEREN_INSTANCE_ID", &id)
                .env("SEREN_HEARTBEAT_SECS", "1")
                .env("SEREN_PG_BINDIR", bindir())
                .env("AWS_ENDPOINT_URL", &self.endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env_remove("SEREN_KMS_KEY_ID")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start seren-worker");
            self.running.push((id, child));
        }
        let mut still = Vec::new();
        for (id, mut child) in self.running.drain(..) {
            match child.try_wait().expect("wait") {
                Some(status) => {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read as _;
                        let _ = e.read_to_string(&mut err);
                    }
                    assert!(
                        !err.contains("e2e-Pa55"),
                        "password in the worker's log: {err}"
                    );
                    eprintln!("worker on {id} exited {status}");
                    // Power-off with InstanceInitiatedShutdownBehavior=terminate.
                    self.ec2
                        .terminate_instances()
                        .instance_ids(&id)
                        .send()
                        .await
                        .expect("terminate");
                }
                None => still.push((id, child)),
            }
        }
        self.running = still;
    }
}

#[test]
fn a_job_through_dynamodb_kms_and_ec2_on_moto_completes_and_leaves_nothing_running() {
    let src = Cluster::start(&pg_harness::Options {
        password: Some("e2e-Pa55;&&$(x)".into()),
        ..pg_harness::Options::source()
    });
    let dst = Cluster::start(&pg_harness::Options {
        password: Some("e2e-Pa55;&&$(x)".into()),
        ..pg_harness::Options::target()
    });
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
         INSERT INTO items SELECT g, 'item ' || g, g / 7.0 FROM generate_series(1, 20000) g;",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let moto = moto_harness::Moto::shared();
        let cfg = moto.sdk_config().await;
        let ec2 = aws_sdk_ec2::Client::new(&cfg);
        let dynamo = aws_sdk_dynamodb::Client::new(&cfg);
        let kms = aws_sdk_kms::Client::new(&cfg);
        let template = moto_harness::ec2::worker_launch_template(&ec2).await;
        let table = moto_harness::unique("replication-jobs");
        let store = DynamoStore::new(dynamo.clone(), &table);
        store.create_table().await.expect("table");
        let key_id = kms
            .create_key()
            .send()
            .await
            .expect("key")
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .expect("key id");
        let state = AppState {
            store: Arc::new(store),
            sealer: Arc::new(KmsSealer::new(kms, key_id)),
            provisioner: Arc::new(Ec2Provisioner::new(
                ec2.clone(),
                Ec2Config {
                    launch_template: template,
                    launch_template_version: "$Latest".into(),
                    subnet_ids: Vec::new(),
                    default_instance_type: Some("t3.micro".into()),
                    use_spot: false,
                    jobs_table: table.clone(),
                    grants: None,
                },
            )),
            keys: ApiKeys::from_hashes(&hash_key(KEY)).expect("keys"),
            settings: Settings::default(),
        };
        let router = app(state);
        let body = serde_json::json!({
            "command": "init",
            "source_url": src.url("shop"),
            "target_url": dst.url("shop_copy"),
            "options": {"jobs": 2},
        })
        .to_string();
        let (status, submitted) = call(&router, "POST", "/jobs", Some(body)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
        let id = submitted["job_id"].as_str().expect("id").to_owned();

        let mut fleet = Fleet {
            ec2: ec2.clone(),
            endpoint: moto.endpoint(),
            started: HashSet::new(),
            running: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let job = loop {
            fleet.step().await;
            let (_, j) = call(&router, "GET", &format!("/jobs/{id}"), None).await;
            let done = j["status"]
                .as_str()
                .is_some_and(|s| matches!(s, "completed" | "failed" | "cancelled" | "timed_out"));
            if done && fleet.running.is_empty() {
                break j;
            }
            assert!(Instant::now() < deadline, "job did not finish: {j}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["progress"]["tables_done"], 1);
        assert_eq!(fleet.started.len(), 1, "one instance for one job");

        // No instance left running.
        let live = ec2
            .describe_instances()
            .filters(Filter::builder().name("tag:JobId").values(&id).build())
            .send()
            .await
            .expect("describe");
        for inst in live.reservations().iter().flat_map(|r| r.instances()) {
            let st = inst
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default();
            assert!(st == "terminated" || st == "shutting-down", "{st}");
        }

        // The item: ttl set, the password nowhere.
        let items = dynamo.scan().table_name(&table).send().await.expect("scan");
        let item = items
            .items()
            .iter()
            .find(|i| i.get("job_id").and_then(|v| v.as_s().ok()) == Some(&id))
            .expect("job item");
        assert!(item.get("ttl").and_then(|v| v.as_n().ok()).is_some());
        for any in items.items() {
            for (k, v) in any {
                assert!(!format!("{v:?}").contains("e2e-Pa55"), "{k}");
                if let Ok(b) = v.as_b() {
                    assert!(
                        !String::from_utf8_lossy(b.as_ref()).contains("e2e-Pa55"),
                        "{k}"
                    );
                }
            }
        }
    });
    let count = |c: &Cluster, db: &str| {
        c.psql(
            db,
            "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM items t",
        )
    };
    assert_eq!(count(&src, "shop"), count(&dst, "shop_copy"));
}

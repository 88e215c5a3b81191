//! What a worker writes to DynamoDB is what its IAM role allows, and no more. The worker runs
//! real jobs (a copy that completes, a verify that finds a difference, a cancelled copy, a
//! stopped one, one whose spot instance is reclaimed) on
//! moto through a client that records every request; each attribute a write touches must be
//! one that `infra/iam.tf` lets the worker role write (`worker_item_attributes`, and on the
//! ledger only the counter item's `worker_ledger_attributes`), and it uses no other action.
//! moto does not evaluate IAM conditions: this test is what keeps the policy and the program
//! in step.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
use aws_sdk_dynamodb::operation::get_item::GetItemInput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
use aws_sdk_dynamodb::types::AttributeValue;
use job_model::seal::{Field, LocalSealer};
use job_model::store::dynamodb::DynamoStore;
use job_model::{
    Change, Command, Expect, FilterSpec, Job, JobSpec, JobStatus, JobStore, Options, Owner, Sealer,
    Secret, Timestamp,
};
use pg_harness::{bindir, Cluster};
use worker::{Config, Outcome};

/// One write as the worker sent it: table, the key's value, the attributes it touches.
#[derive(Debug, Clone)]
struct Write {
    table: String,
    key: String,
    attributes: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Recorded {
    operations: BTreeSet<String>,
    writes: Vec<Write>,
}

#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Recorded>>);

const KEYWORDS: &[&str] = &[
    "SET",
    "REMOVE",
    "ADD",
    "DELETE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "BETWEEN",
    "attribute_exists",
    "attribute_not_exists",
    "attribute_type",
    "if_not_exists",
    "list_append",
    "begins_with",
    "contains",
    "size",
];

/// The attribute names an update or condition expression touches: `#name` placeholders
/// resolved, bare names as they are, `:values` and keywords left out.
fn names_in(
    expr: Option<&str>,
    placeholders: Option<&std::collections::HashMap<String, String>>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(expr) = expr else { return out };
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == ':' || c == '#' || c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            i += 1;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_')
            {
                i += 1;
            }
            let word = &expr[start..i];
            match c {
                ':' => {}
                '#' => {
                    let real = placeholders
                        .and_then(|p| p.get(word))
                        .unwrap_or_else(|| panic!("placeholder {word} without a name in {expr}"));
                    out.insert(real.clone());
                }
                _ if KEYWORDS.contains(&word) => {}
                _ => {
                    out.insert(word.to_owned());
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

fn key_of(
    key: Option<&std::collections::HashMap<String, AttributeValue>>,
) -> (String, BTreeSet<String>) {
    let key = key.expect("a key");
    let value = key
        .values()
        .next()
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    (value, key.keys().cloned().collect())
}

impl Recorder {
    fn update(
        &self,
        table: &str,
        key: Option<&std::collections::HashMap<String, AttributeValue>>,
        update: Option<&str>,
        condition: Option<&str>,
        names: Option<&std::collections::HashMap<String, String>>,
    ) {
        let (key, mut attributes) = key_of(key);
        attributes.extend(names_in(update, names));
        attributes.extend(names_in(condition, names));
        self.0.lock().expect("lock").writes.push(Write {
            table: table.to_owned(),
            key,
            attributes,
        });
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "record the worker's requests"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let input = context.input();
        let op = if let Some(u) = input.downcast_ref::<UpdateItemInput>() {
            self.update(
                u.table_name().unwrap_or_default(),
                u.key(),
                u.update_expression(),
                u.condition_expression(),
                u.expression_attribute_names(),
            );
            "UpdateItem"
        } else if let Some(t) = input.downcast_ref::<TransactWriteItemsInput>() {
            for item in t.transact_items() {
                let u = item
                    .update()
                    .unwrap_or_else(|| panic!("a worker's transaction only updates: {item:?}"));
                self.update(
                    u.table_name(),
                    Some(u.key()),
                    Some(u.update_expression()),
                    u.condition_expression(),
                    u.expression_attribute_names(),
                );
            }
            "TransactWriteItems"
        } else if input.downcast_ref::<GetItemInput>().is_some() {
            "GetItem"
        } else {
            "another operation"
        };
        self.0
            .lock()
            .expect("lock")
            .operations
            .insert(op.to_owned());
        Ok(())
    }
}

/// A string list assigned to `name` in infra/iam.tf.
fn terraform_list(name: &str) -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/iam.tf");
    let text = std::fs::read_to_string(path).expect("read infra/iam.tf");
    let start = text
        .find(&format!("{name} "))
        .and_then(|i| text[i..].find('[').map(|j| i + j + 1))
        .unwrap_or_else(|| panic!("{name} in infra/iam.tf"));
    let end = start + text[start..].find(']').expect("end of list");
    text[start..end]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn job_on(
    store: &dyn JobStore,
    sealer: &dyn Sealer,
    command: Command,
    source: &str,
    target: &str,
) -> Job {
    let id = Job::new_id();
    let job = Job::new(
        id.clone(),
        Owner("key-scope".into()),
        JobSpec {
            command,
            filter: FilterSpec::default(),
            options: Options::default(),
        },
        (
            sealer
                .seal(&id, Field::SourceUrl, &Secret::new(source))
                .await
                .expect("seal"),
            sealer
                .seal(&id, Field::TargetUrl, &Secret::new(target))
                .await
                .expect("seal"),
        ),
        ("src".into(), "dst".into()),
        None,
        Timestamp::now(),
        job_model::job::DEFAULT_RETENTION,
    );
    store.create(&job, Some(10)).await.expect("create");
    store
        .transition(
            &job.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Provisioning, Timestamp::now()).instance("i-scope"),
        )
        .await
        .expect("provision")
}

#[test]
fn a_worker_writes_only_what_its_role_may_write() {
    let src = Cluster::start(&pg_harness::Options::source());
    let dst = Cluster::start(&pg_harness::Options::target());
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 300000) g;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let sealer: Arc<dyn Sealer> =
        Arc::new(LocalSealer::open_or_create(&dir.path().join("k")).expect("sealer"));
    let recorder = Recorder::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let moto = moto_harness::Moto::shared();
        let sdk = moto.sdk_config().await;
        // The tables are made and the jobs submitted without the recorder: those are the
        // coordinator's writes.
        let table = moto_harness::unique("jobs");
        let setup = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone());
        setup.create_table().await.expect("create tables");
        let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(recorder.clone())
            .build();
        let store: Arc<dyn JobStore> = Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::from_conf(conf),
            table.clone(),
        ));
        let run = |job: Job, stop: Option<Duration>| {
            let (store, sealer) = (store.clone(), sealer.clone());
            async move {
                let mut c = Config::new(job.job_id.clone(), "i-scope");
                c.heartbeat_every = Duration::from_millis(100);
                c.pg_bindir = Some(bindir());
                let halt = async move {
                    match stop {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                worker::run(store, sealer, c, halt).await.expect("run")
            }
        };

        // A copy to its end: claim, heartbeats with progress, completed.
        let copy = job_on(
            &setup,
            &*sealer,
            Command::Init,
            &src.url("shop"),
            &dst.url("shop"),
        )
        .await;
        assert_eq!(run(copy, None).await, Outcome::Completed);
        // A verify that finds a difference: failed, with its report.
        dst.psql("shop", "UPDATE items SET name = 'changed' WHERE id = 7");
        let check = job_on(
            &setup,
            &*sealer,
            Command::Verify,
            &src.url("shop"),
            &dst.url("shop"),
        )
        .await;
        let outcome = run(check, None).await;
        assert!(
            matches!(&outcome, Outcome::Failed(e) if e.code == "verify_mismatch"),
            "{outcome:?}"
        );
        // A cancel while copying, and a stop signal: the other two ways a worker ends a job.
        let cancelled = job_on(
            &setup,
            &*sealer,
            Command::Init,
            &src.url("shop"),
            &dst.url("again"),
        )
        .await;
        let (s2, id) = (setup.clone(), cancelled.job_id.clone());
        let canceller = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let j = s2.get(&id).await.expect("get").expect("job");
                if j.status == JobStatus::Running {
                    s2.request_cancel(&id, Timestamp::now())
                        .await
                        .expect("cancel");
                    break;
                }
            }
        });
        let outcome = run(cancelled, None).await;
        canceller.await.expect("canceller");
        assert!(
            matches!(outcome, Outcome::Cancelled | Outcome::Completed),
            "{outcome:?}"
        );
        let stopped = job_on(
            &setup,
            &*sealer,
            Command::Init,
            &src.url("shop"),
            &dst.url("third"),
        )
        .await;
        let outcome = run(stopped, Some(Duration::from_millis(300))).await;
        assert!(
            matches!(outcome, Outcome::Stopped | Outcome::Completed),
            "{outcome:?}"
        );
        // A spot interruption: the job back to pending for its next worker, attempt counted.
        let reclaimed = job_on(
            &setup,
            &*sealer,
            Command::Init,
            &src.url("shop"),
            &dst.url("fourth"),
        )
        .await;
        let mut c = Config::new(reclaimed.job_id.clone(), "i-scope");
        c.heartbeat_every = Duration::from_millis(100);
        c.pg_bindir = Some(bindir());
        let notice = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "terminate".to_owned()
        };
        let outcome = worker::run_watched(
            store.clone(),
            sealer.clone(),
            c,
            std::future::pending(),
            notice,
        )
        .await
        .expect("run");
        if outcome == Outcome::Interrupted {
            let j = setup
                .get(&reclaimed.job_id)
                .await
                .expect("get")
                .expect("job");
            assert_eq!((j.status, j.attempt), (JobStatus::Pending, 2));
        } else {
            assert_eq!(outcome, Outcome::Completed);
        }
    });

    let recorded = recorder.0.lock().expect("lock");
    let allowed_ops: BTreeSet<String> = ["GetItem", "UpdateItem", "TransactWriteItems"]
        .map(str::to_owned)
        .into();
    assert!(
        recorded.operations.is_subset(&allowed_ops),
        "the worker called {:?}",
        recorded.operations
    );
    let job_attrs = terraform_list("worker_item_attributes");
    let ledger_keys = terraform_list("worker_ledger_keys");
    let ledger_attrs = terraform_list("worker_ledger_attributes");
    for forbidden in [
        "spec",
        "ttl",
        "source_display",
        "target_display",
        "idempotency_key",
        "cancel_requested_at",
    ] {
        assert!(
            !job_attrs.contains(forbidden),
            "{forbidden} must stay out of the worker's reach"
        );
    }
    let mut seen = BTreeSet::new();
    let mut ledger_writes = 0;
    for w in &recorded.writes {
        if w.table.ends_with("-ledger") {
            ledger_writes += 1;
            assert!(
                ledger_keys.contains(&w.key),
                "ledger item {} written: {w:?}",
                w.key
            );
            let extra: Vec<_> = w.attributes.difference(&ledger_attrs).collect();
            assert!(
                extra.is_empty(),
                "ledger attributes outside the policy: {extra:?} in {w:?}"
            );
        } else {
            let extra: Vec<_> = w.attributes.difference(&job_attrs).collect();
            assert!(
                extra.is_empty(),
                "job attributes outside the policy: {extra:?} in {w:?}"
            );
            seen.extend(w.attributes.iter().cloned());
        }
    }
    // The recording saw the worker's real writes: claims, heartbeats, outcomes with results.
    for expected in [
        "status",
        "instance_id",
        "heartbeat_at",
        "progress",
        "result",
        "error",
        "source_secret",
    ] {
        assert!(
            seen.contains(expected),
            "no write touched {expected}: {seen:?}"
        );
    }
    assert!(
        ledger_writes >= 3,
        "each finish decrements the count: {ledger_writes}"
    );
}

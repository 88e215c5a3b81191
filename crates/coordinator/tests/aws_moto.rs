//! The AWS adapters together on moto's server: the EC2 provisioner, and the whole API over
//! DynamoDB + KMS + EC2 with the operator queries of the product description.

mod common;

use std::sync::Arc;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use axum::http::StatusCode;
use common::*;
use coordinator::provision::ec2::{parse_user_data, Ec2Config, Ec2Provisioner};
use coordinator::provision::grant::WorkerGrants;
use coordinator::provision::Provisioner;
use coordinator::{app, hash_key, ApiKeys, AppState, Settings};
use job_model::seal::KmsSealer;
use job_model::store::dynamodb::DynamoStore;
use job_model::{Command, Job, JobSpec, Options, Owner, Timestamp};

struct Aws {
    ec2: aws_sdk_ec2::Client,
    cfg: aws_config::SdkConfig,
    template: String,
}

async fn aws() -> Aws {
    let moto = moto_harness::Moto::shared();
    let cfg = moto.sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&cfg);
    let template = moto_harness::ec2::worker_launch_template(&ec2).await;
    Aws { ec2, cfg, template }
}

fn provisioner(aws: &Aws) -> Ec2Provisioner {
    Ec2Provisioner::new(
        aws.ec2.clone(),
        Ec2Config {
            launch_template: aws.template.clone(),
            launch_template_version: "$Latest".into(),
            subnet_ids: Vec::new(),
            default_instance_type: None,
            use_spot: false,
            jobs_table: "replication-jobs".into(),
            grants: None,
        },
    )
}

fn job(instance_type: Option<&str>) -> Job {
    Job::new(
        Job::new_id(),
        Owner("key-test".into()),
        JobSpec {
            command: Command::Init,
            filter: Default::default(),
            options: Options {
                instance_type: instance_type.map(str::to_owned),
                ..Options::default()
            },
        },
        (vec![1], vec![2]),
        ("postgresql://u@s/db".into(), "postgresql://u@t/db".into()),
        None,
        Timestamp::now(),
        job_model::job::DEFAULT_RETENTION,
    )
}

async fn instances_of(
    ec2: &aws_sdk_ec2::Client,
    job_id: &str,
) -> Vec<aws_sdk_ec2::types::Instance> {
    ec2.describe_instances()
        .filters(Filter::builder().name("tag:JobId").values(job_id).build())
        .send()
        .await
        .expect("describe")
        .reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

fn state_of(i: &aws_sdk_ec2::types::Instance) -> String {
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn ec2_launch_is_tagged_idempotent_and_terminates_only_its_own() {
    let aws = aws().await;
    let p = provisioner(&aws);
    let j = job(Some("c5.large"));
    let first = p.launch(&j).await.expect("launch").instance_id;
    let retried = p.launch(&j).await.expect("launch again").instance_id;
    assert_eq!(first, retried, "a retried launch makes no second instance");
    let found = instances_of(&aws.ec2, &j.job_id).await;
    assert_eq!(found.len(), 1);
    let inst = &found[0];
    assert_eq!(inst.instance_type().map(|t| t.as_str()), Some("c5.large"));
    let tag = |k: &str| {
        inst.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    assert_eq!(tag("Name"), Some(format!("seren-replication-{}", j.job_id)));
    assert_eq!(tag("JobId"), Some(j.job_id.clone()));
    assert_eq!(
        tag("ManagedBy").as_deref(),
        Some("seren-replication-system")
    );

    let script = moto_harness::ec2::user_data(&aws.ec2, &first).await;
    assert_eq!(
        parse_user_data(&script),
        vec![
            ("SEREN_JOB_ID".to_owned(), j.job_id.clone()),
            ("SEREN_JOBS_TABLE".to_owned(), "replication-jobs".to_owned()),
        ]
    );
    assert!(!script.contains("postgresql://"));
    let sd = aws
        .ec2
        .describe_instance_attribute()
        .instance_id(&first)
        .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .expect("shutdown behaviour");
    assert_eq!(
        sd.instance_initiated_shutdown_behavior()
            .and_then(|v| v.value()),
        Some("terminate")
    );

    // An instance someone else started with the same JobId tag but not ManagedBy.
    let ami = moto_harness::ec2::ami(&aws.ec2).await;
    let foreign = aws
        .ec2
        .run_instances()
        .image_id(ami)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("JobId")
                        .value(&j.job_id)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("foreign instance");
    let foreign_id = foreign.instances()[0].instance_id().expect("id").to_owned();

    let stopped = p.terminate(&j.job_id).await.expect("terminate");
    assert_eq!(stopped, vec![first.clone()]);
    for i in instances_of(&aws.ec2, &j.job_id).await {
        let id = i.instance_id().unwrap_or_default();
        let st = state_of(&i);
        if id == foreign_id {
            assert_eq!(st, "running", "an unmanaged instance is never touched");
        } else {
            assert!(st == "terminated" || st == "shutting-down", "{id}: {st}");
        }
    }
    p.terminate_instance(&foreign_id).await.expect("no-op");
    let still = instances_of(&aws.ec2, &j.job_id).await;
    assert!(still
        .iter()
        .any(|i| i.instance_id() == Some(&foreign_id) && state_of(i) == "running"));
    // Size tiers: no type asked, small source.
    let mut small = job(None);
    small.spec.options.source_size_bytes = Some(1 << 30);
    p.launch(&small).await.expect("launch small");
    let s = instances_of(&aws.ec2, &small.job_id).await;
    assert_eq!(s[0].instance_type().map(|t| t.as_str()), Some("t3.medium"));
    p.terminate(&small.job_id).await.expect("cleanup");
}

/// The reaper asks EC2 why a silent worker's instance is gone, to tell a spot reclaim
/// (`interrupted`) from a crash (`heartbeat_lost`): a live instance is not gone, a terminated
/// one says why, an id EC2 has forgotten says nothing.
#[tokio::test]
async fn ec2_says_why_a_worker_instance_is_gone() {
    use coordinator::provision::Gone;
    let aws = aws().await;
    let p = provisioner(&aws);
    let j = job(Some("c5.large"));
    let id = p.launch(&j).await.expect("launch").instance_id;
    assert_eq!(p.why_gone(&id).await.expect("alive"), None);
    p.terminate(&j.job_id).await.expect("terminate");
    match p.why_gone(&id).await.expect("gone") {
        Some(Gone::Other { reason }) => assert!(
            reason.as_deref().is_some_and(|r| r.starts_with("Client.")),
            "{reason:?}"
        ),
        other => panic!("a terminated on-demand instance: {other:?}"),
    }
    assert_eq!(
        p.why_gone("i-0123456789abcdef0").await.expect("unknown"),
        None
    );
}

#[tokio::test]
async fn each_worker_gets_a_kms_grant_for_its_own_job_only_until_it_is_gone() {
    let aws = aws().await;
    let kms = aws_sdk_kms::Client::new(&aws.cfg);
    let key = kms
        .create_key()
        .description("seren grants test")
        .send()
        .await
        .expect("key")
        .key_metadata()
        .expect("metadata")
        .key_id()
        .to_owned();
    let role = "arn:aws:iam::123456789012:role/seren-worker";
    let grants = WorkerGrants::new(kms.clone(), key.clone(), role).expect("grants");
    let mut p = provisioner(&aws);
    p = Ec2Provisioner::new(
        aws.ec2.clone(),
        Ec2Config {
            grants: Some(grants.clone()),
            ..p.config().clone()
        },
    );
    let (a, b) = (job(Some("c5.large")), job(Some("c5.large")));
    let ia = p.launch(&a).await.expect("launch a").instance_id;
    let ib = p.launch(&b).await.expect("launch b").instance_id;
    assert_eq!(p.launch(&a).await.expect("relaunch a").instance_id, ia);

    let listed = |kms: aws_sdk_kms::Client, key: String| async move {
        kms.list_grants()
            .key_id(key)
            .send()
            .await
            .expect("list grants")
            .grants()
            .to_vec()
    };
    let all = listed(kms.clone(), key.clone()).await;
    for (job, instance) in [(&a, &ia), (&b, &ib)] {
        let mine: Vec<_> = all
            .iter()
            .filter(|g| g.name() == Some(format!("seren-job-{}", job.job_id).as_str()))
            .collect();
        assert!(!mine.is_empty(), "no grant for {}", job.job_id);
        for g in mine {
            assert_eq!(
                g.grantee_principal(),
                Some(
                    format!("arn:aws:sts::123456789012:assumed-role/seren-worker/{instance}")
                        .as_str()
                ),
                "the grant is for that instance's session only"
            );
            assert_eq!(
                g.operations(),
                &[aws_sdk_kms::types::GrantOperation::Decrypt]
            );
            let ctx = g
                .constraints()
                .and_then(|c| c.encryption_context_subset())
                .expect("an encryption context constraint");
            assert_eq!(ctx.len(), 1);
            assert_eq!(ctx.get("job_id"), Some(&job.job_id));
        }
    }

    // Terminating a job's workers revokes its grant and leaves the other job's.
    p.terminate(&a.job_id).await.expect("terminate a");
    let names: Vec<String> = listed(kms.clone(), key.clone())
        .await
        .iter()
        .filter_map(|g| g.name().map(str::to_owned))
        .collect();
    assert!(!names.contains(&format!("seren-job-{}", a.job_id)));
    assert!(names.contains(&format!("seren-job-{}", b.job_id)));

    // A worker that powered itself off: the sweep revokes what it held; live ones keep theirs.
    let c = job(Some("c5.large"));
    let ic = p.launch(&c).await.expect("launch c").instance_id;
    aws.ec2
        .terminate_instances()
        .instance_ids(&ib)
        .send()
        .await
        .expect("b powers off");
    let swept = p.sweep(Timestamp::now()).await.expect("sweep");
    assert_eq!(swept, vec![b.job_id.clone()]);
    let names: Vec<String> = listed(kms.clone(), key.clone())
        .await
        .iter()
        .filter_map(|g| g.name().map(str::to_owned))
        .collect();
    assert_eq!(names, vec![format!("seren-job-{}", c.job_id)]);
    assert!(p.sweep(Timestamp::now()).await.expect("again").is_empty());
    p.terminate(&c.job_id).await.expect("cleanup");
    assert!(!ic.is_empty());
}

#[tokio::test]
async fn the_api_on_dynamodb_kms_and_ec2_keeps_operator_queries_working_and_no_password() {
    let aws = aws().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&aws.cfg);
    let table = moto_harness::unique("replication-jobs");
    let store = DynamoStore::new(dynamo.clone(), &table);
    store.create_table().await.expect("table");
    let kms = aws_sdk_kms::Client::new(&aws.cfg);
    let key = kms.create_key().send().await.expect("key");
    let key_id = key
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .expect("key id");
    let state = AppState {
        store: Arc::new(store),
        sealer: Arc::new(KmsSealer::new(kms, key_id)),
        provisioner: Arc::new(Ec2Provisioner::new(
            aws.ec2.clone(),
            Ec2Config {
                launch_template: aws.template.clone(),
                launch_template_version: "$Latest".into(),
                subnet_ids: Vec::new(),
                default_instance_type: Some("c5.xlarge".into()),
                use_spot: false,
                jobs_table: table.clone(),
                grants: None,
            },
        )),
        keys: ApiKeys::from_hashes(&hash_key(KEY_A)).expect("keys"),
        settings: Settings::default(),
    };
    let router = app(state.clone());
    let a = call(
        &router,
        request(
            "POST",
            "/jobs",
            Some(KEY_A),
            Some(&submit_body("src.example.com")),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.json()["job_id"].as_str().expect("id").to_owned();

    // aws dynamodb scan --table-name replication-jobs
    //   --query 'Items[].{JobId:job_id.S,Status:status.S,Created:created_at.S}'
    // The table holds jobs only: no counter or idempotency row with a null status.
    let scan = dynamo.scan().table_name(&table).send().await.expect("scan");
    let job_items: Vec<_> = scan.items().iter().collect();
    assert_eq!(job_items.len(), 1, "{job_items:?}");
    let item = job_items[0];
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    assert_eq!(s("job_id"), Some(id.clone()));
    assert_eq!(s("status").as_deref(), Some("provisioning"));
    assert!(s("created_at").is_some_and(|c| Timestamp::parse(&c).is_ok()));
    assert!(item.get("ttl").and_then(|v| v.as_n().ok()).is_some());
    // No attribute of any item holds the password, in any form.
    for any in scan.items() {
        for (k, v) in any {
            let text = format!("{v:?}");
            assert!(
                !text.contains("reboot") && !text.contains("pw%3B"),
                "{k}: {text}"
            );
            if let Ok(b) = v.as_b() {
                assert!(
                    !String::from_utf8_lossy(b.as_ref()).contains("reboot"),
                    "{k}"
                );
            }
        }
    }

    // aws ec2 describe-instances --filters "Name=tag:ManagedBy,Values=seren-replication-system"
    let described = aws
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:ManagedBy")
                .values("seren-replication-system")
                .build(),
        )
        .send()
        .await
        .expect("describe");
    let tagged: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.tags()
                .iter()
                .any(|t| t.key() == Some("JobId") && t.value() == Some(id.as_str()))
        })
        .collect();
    assert_eq!(tagged.len(), 1);
    assert_eq!(
        tagged[0].instance_type().map(|t| t.as_str()),
        Some("c5.xlarge")
    );
    let shown = call(
        &router,
        request("GET", &format!("/jobs/{id}"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(
        shown.json()["instance_id"],
        tagged[0].instance_id().unwrap_or_default()
    );
    // The record names its worker, with the type, market and list price.
    let usage = &shown.json()["usage"];
    assert_eq!(usage["workers"][0]["instance_type"], "c5.xlarge", "{usage}");
    assert_eq!(usage["workers"][0]["market"], "on_demand");
    assert!(usage["cost_usd"].as_f64().is_some(), "{usage}");

    // A dry run asks the same provisioner what it would launch, and starts nothing.
    let sized = submit_body("src.example.com").replace(
        r#""options":{"jobs":4}"#,
        r#""options":{"jobs":4,"source_size_bytes":600000000000}"#,
    );
    let dry = call(
        &router,
        request("POST", "/estimates", Some(KEY_A), Some(&sized)),
    )
    .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    let e = &dry.json()["estimate"];
    assert_eq!(
        e["instance_type"], "c5.xlarge",
        "the deployment's default: {e}"
    );
    assert_eq!(e["market"], "on_demand");
    assert_eq!(e["copy_seconds"], 10_000);
    assert_eq!(e["on_demand_usd"], 0.478, "{e}");
    let after = dynamo.scan().table_name(&table).send().await.expect("scan");
    assert_eq!(after.items().len(), 1, "a dry run stores nothing");

    // The worker's side: the sealed URL opens for this job only.
    let job = state.store.get(&id).await.expect("get").expect("job");
    let url = state
        .sealer
        .open(&id, job_model::seal::Field::SourceUrl, &job.source_secret)
        .await
        .expect("open");
    assert!(url.expose().contains(PASSWORD_ENC));
    assert!(state
        .sealer
        .open(
            &Job::new_id(),
            job_model::seal::Field::SourceUrl,
            &job.source_secret
        )
        .await
        .is_err());

    // Cancel before it runs: cancelled, instance terminated.
    let c = call(
        &router,
        request("POST", &format!("/jobs/{id}/cancel"), Some(KEY_A), None),
    )
    .await;
    assert_eq!(c.json()["status"], "cancelled");
    let after = instances_of(&aws.ec2, &id).await;
    assert!(after
        .iter()
        .all(|i| matches!(state_of(i).as_str(), "terminated" | "shutting-down")));
    // The ended job's item holds no sealed URL any more.
    let item = dynamo
        .get_item()
        .table_name(&table)
        .key(
            "job_id",
            aws_sdk_dynamodb::types::AttributeValue::S(id.clone()),
        )
        .send()
        .await
        .expect("get item")
        .item
        .expect("item");
    assert!(!item.contains_key("source_secret") && !item.contains_key("target_secret"));
}

/// DynamoDB answers a transaction that collides with another on the counter item with
/// `TransactionConflict`, and sometimes loses the answer of one that committed; moto does
/// neither, so both are injected (30 % and 10 % of creates and finishes). A burst of 100
/// submits against a limit of 10 still gets exactly 10 jobs and 90 × 429, never a 5xx, and the
/// count of active jobs stays exact through the cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_submits_with_injected_conflicts_gets_exactly_the_limit_and_no_5xx() {
    use job_model::store::fault::{Call, Faulty, Rule};
    use job_model::store::retry::{Backoff, Retrying};
    use job_model::JobStore;

    let aws = aws().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&aws.cfg);
    let table = moto_harness::unique("replication-jobs");
    let raw = DynamoStore::new(dynamo.clone(), &table);
    raw.create_table().await.expect("table");
    let raw: Arc<dyn JobStore> = Arc::new(raw);
    let rule = Rule::Random {
        before: 0.3,
        after: 0.1,
    };
    let faulty = Arc::new(
        Faulty::new(raw.clone(), 42)
            .with(Call::Create, rule)
            .with(Call::Finish, rule),
    );
    let kms = aws_sdk_kms::Client::new(&aws.cfg);
    let key_id = kms
        .create_key()
        .send()
        .await
        .expect("key")
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .expect("key id");
    let state = AppState {
        store: Retrying::shared(faulty.clone(), Backoff::REQUEST),
        sealer: Arc::new(KmsSealer::new(kms, key_id)),
        provisioner: Arc::new(Ec2Provisioner::new(
            aws.ec2.clone(),
            Ec2Config {
                jobs_table: table.clone(),
                ..provisioner(&aws).config().clone()
            },
        )),
        keys: ApiKeys::from_hashes(&hash_key(KEY_A)).expect("keys"),
        settings: Settings {
            max_concurrent_jobs: Some(10),
            ..Settings::default()
        },
    };
    let router = app(state.clone());
    let burst = |n: usize, tag: &'static str| {
        let router = router.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let router = router.clone();
                tasks.spawn(async move {
                    let body = submit_body(&format!("{tag}{i}.example.com"));
                    call(&router, request("POST", "/jobs", Some(KEY_A), Some(&body))).await
                });
            }
            let mut answers = vec![];
            while let Some(a) = tasks.join_next().await {
                answers.push(a.expect("join"));
            }
            answers
        }
    };
    let answers = burst(100, "s").await;
    let count = |s: StatusCode| answers.iter().filter(|a| a.status == s).count();
    let fivexx = answers
        .iter()
        .filter(|a| a.status.is_server_error())
        .count();
    let injected = faulty.injected(Call::Create);
    eprintln!(
        "100 submits, limit 10, injected into creates: {} conflicts, {} lost answers: \
         {} accepted, {} × 429, {} × 5xx",
        injected.before,
        injected.after,
        count(StatusCode::ACCEPTED),
        count(StatusCode::TOO_MANY_REQUESTS),
        fivexx
    );
    assert_eq!(
        fivexx,
        0,
        "{:?}",
        answers
            .iter()
            .find(|a| a.status.is_server_error())
            .map(|a| &a.body)
    );
    assert_eq!(count(StatusCode::ACCEPTED), 10);
    assert_eq!(count(StatusCode::TOO_MANY_REQUESTS), 90);
    assert!(injected.before > 0 && injected.after > 0, "{injected:?}");

    // Cancel all ten at once: each finish writes the counter in a transaction, colliding.
    let ids: Vec<String> = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .map(|a| a.json()["job_id"].as_str().expect("id").to_owned())
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let router = router.clone();
        tasks.spawn(async move {
            call(
                &router,
                request("POST", &format!("/jobs/{id}/cancel"), Some(KEY_A), None),
            )
            .await
        });
    }
    while let Some(a) = tasks.join_next().await {
        let a = a.expect("join");
        assert!(a.status.is_success(), "{} {}", a.status, a.body);
    }
    for id in &ids {
        let j = raw.get(id).await.expect("get").expect("job");
        assert_eq!(j.status, job_model::JobStatus::Cancelled, "{id}");
    }
    assert_eq!(
        raw.reconcile_active(std::time::Duration::ZERO)
            .await
            .expect("reconcile"),
        None,
        "the active count is exact after {:?} injected into finishes",
        faulty.injected(Call::Finish)
    );
    // The ten slots are free again, and no more than ten.
    let again = burst(12, "t").await;
    assert_eq!(
        again
            .iter()
            .filter(|a| a.status == StatusCode::ACCEPTED)
            .count(),
        10
    );
    assert_eq!(
        again
            .iter()
            .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        2
    );
    for a in again.iter().filter(|a| a.status == StatusCode::ACCEPTED) {
        let id = a.json()["job_id"].as_str().expect("id").to_owned();
        state.provisioner.terminate(&id).await.expect("cleanup");
    }
}

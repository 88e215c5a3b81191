//! The reaper against DynamoDB and EC2 on moto's server (its own test process, so that no other
//! test's instances count as orphans).

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use coordinator::provision::ec2::{Ec2Config, Ec2Provisioner};
use coordinator::provision::Provisioner;
use coordinator::reaper::{reap, Policy};
use job_model::store::dynamodb::DynamoStore;
use job_model::{Change, Command, Expect, Job, JobSpec, JobStatus, JobStore, Owner, Timestamp};

fn ago(secs: u64) -> Timestamp {
    Timestamp::from_unix_millis(
        Timestamp::now().unix_millis() - i64::try_from(secs * 1000).unwrap_or(0),
    )
}

fn job(created: Timestamp) -> Job {
    Job::new(
        Job::new_id(),
        Owner("key-test".into()),
        JobSpec {
            command: Command::Init,
            filter: Default::default(),
            options: Default::default(),
        },
        (vec![1], vec![2]),
        ("postgresql://u@s/db".into(), "postgresql://u@t/db".into()),
        None,
        created,
        job_model::job::DEFAULT_RETENTION,
    )
}

async fn state(ec2: &aws_sdk_ec2::Client, instance: &str) -> String {
    ec2.describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .expect("describe")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| {
            i.state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
        })
        .unwrap_or_default()
}

/// Put a job in `running` on a real (moto) instance, with its last heartbeat at `beat`; it
/// may use `max_attempts` workers (None: the default).
async fn running(
    store: &DynamoStore,
    p: &Ec2Provisioner,
    started: Timestamp,
    beat: Timestamp,
    max_attempts: Option<u32>,
) -> (Job, String) {
    let mut j = job(started);
    j.spec.options.max_attempts = max_attempts;
    store.create(&j, None).await.expect("create");
    let instance = p.launch(&j).await.expect("launch").instance_id;
    store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Provisioning, started).instance(&instance),
        )
        .await
        .expect("provision");
    store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Provisioning),
            Change::to(JobStatus::Running, started).instance(&instance),
        )
        .await
        .expect("claim");
    store
        .heartbeat(&j.job_id, &instance, None, beat)
        .await
        .expect("beat");
    (j, instance)
}

#[tokio::test]
async fn the_reaper_ends_dead_jobs_and_terminates_orphans_on_moto() {
    let moto = moto_harness::Moto::shared();
    let cfg = moto.sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&cfg);
    let template = moto_harness::ec2::worker_launch_template(&ec2).await;
    let table = moto_harness::unique("replication-jobs");
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&cfg), &table);
    store.create_table().await.expect("table");
    let p = Ec2Provisioner::new(
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
    );

    // A worker that died on its job's only attempt: its heartbeat stopped ten minutes ago.
    let (dead, dead_instance) = running(&store, &p, ago(3600), ago(600), Some(1)).await;
    // One that died on the first of three: the job gets a new worker.
    let (lost, lost_instance) = running(&store, &p, ago(3600), ago(600), None).await;
    // A healthy one.
    let (alive, alive_instance) = running(&store, &p, ago(3600), ago(10), None).await;
    // One that finished ten minutes ago but whose instance never went away.
    let (done, done_instance) = running(&store, &p, ago(3600), ago(700), None).await;
    store
        .transition(
            &done.job_id,
            Expect::status(JobStatus::Running),
            Change::to(JobStatus::Completed, ago(600)),
        )
        .await
        .expect("complete");
    // An instance for a job this table never heard of.
    let stray = job(Timestamp::now());
    let stray_instance = p.launch(&stray).await.expect("stray launch").instance_id;
    // A job whose coordinator died before provisioning it.
    let stuck = job(ago(900));
    store.create(&stuck, None).await.expect("stuck");

    // A job whose item vanished while it was active (a crash between steps, an item deleted
    // by hand): its slot in the count of active jobs leaked.
    let leaked = job(Timestamp::now());
    store.create(&leaked, None).await.expect("leaked");
    aws_sdk_dynamodb::Client::new(&cfg)
        .delete_item()
        .table_name(&table)
        .key(
            "job_id",
            aws_sdk_dynamodb::types::AttributeValue::S(leaked.job_id.clone()),
        )
        .send()
        .await
        .expect("delete");

    let policy = Policy {
        orphan_grace: Duration::ZERO,
        count_quiet: Duration::ZERO,
        ..Policy::default()
    };
    let report = reap(&store, &p, &policy, Timestamp::now()).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // The count's difference is only noted by this pass (listings can catch a job moving
    // between statuses); the next one, finding the same, corrects it (at the end).
    assert_eq!(report.count_corrected, None, "noted only");

    let failed = store.get(&dead.job_id).await.expect("get").expect("dead");
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.error.as_ref().map(|e| e.code.as_str()),
        Some("heartbeat_lost")
    );
    let stuck_now = store.get(&stuck.job_id).await.expect("get").expect("stuck");
    assert_eq!(stuck_now.status, JobStatus::Failed);
    assert_eq!(
        stuck_now.error.map(|e| e.code),
        Some("never_provisioned".into())
    );
    assert_eq!(
        store
            .get(&alive.job_id)
            .await
            .expect("get")
            .map(|j| j.status),
        Some(JobStatus::Running)
    );
    let mut failed_ids = report.failed.clone();
    failed_ids.sort();
    let mut want = vec![dead.job_id.clone(), stuck.job_id.clone()];
    want.sort();
    assert_eq!(failed_ids, want);

    // The lost worker's job is provisioning again, on a new instance.
    assert_eq!(report.relaunched, vec![lost.job_id.clone()]);
    let retried = store.get(&lost.job_id).await.expect("get").expect("lost");
    assert_eq!(
        (retried.status, retried.attempt),
        (JobStatus::Provisioning, 2)
    );
    let next_instance = retried.instance_id.clone().expect("new instance");
    assert_ne!(next_instance, lost_instance);
    assert_eq!(state(&ec2, &next_instance).await, "running");
    let why = retried.error.expect("why");
    assert_eq!(why.code, "heartbeat_lost");
    assert!(
        why.message.ends_with("resuming on attempt 2/3"),
        "{}",
        why.message
    );

    for gone in [
        &dead_instance,
        &lost_instance,
        &done_instance,
        &stray_instance,
    ] {
        let st = state(&ec2, gone).await;
        assert!(st == "terminated" || st == "shutting-down", "{gone}: {st}");
        assert!(report.terminated.contains(gone), "{gone} not in {report:?}");
    }
    assert_eq!(state(&ec2, &alive_instance).await, "running");

    // The operator's view afterwards: only the healthy worker is left.
    let live: Vec<String> = ec2
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
        .expect("describe")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    let mut want_live = vec![alive_instance.clone(), next_instance.clone()];
    want_live.sort();
    let mut live = live;
    live.sort();
    assert_eq!(live, want_live);

    // A second pass changes nothing.
    let again = reap(&store, &p, &policy, Timestamp::now()).await;
    assert!(again.failures.is_empty(), "{:?}", again.failures);
    assert!(
        again.failed.is_empty() && again.terminated.is_empty() && again.relaunched.is_empty(),
        "{again:?}"
    );
    // ... but the count of active jobs: the same difference found twice, the leaked slot is
    // given back.
    let corrected = again
        .count_corrected
        .expect("the leaked slot is given back");
    assert_eq!(corrected.was - corrected.now, 1, "{corrected:?}");
}

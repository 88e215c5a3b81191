//! Spot workers on moto's EC2 (its own test process, so that its reaper pass sees its own
//! instances only): spot first, on-demand when spot capacity is refused (with the reason on the
//! job's record), on-demand after a reclaim, and a job whose spot instance went away finishing
//! on the next worker with both on its record.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeSerializationInterceptorContextRef,
    BeforeTransmitInterceptorContextMut,
};
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::operation::run_instances::RunInstancesInput;
use aws_sdk_ec2::types::{Filter, InstanceLifecycleType, MarketType};
use coordinator::provision::ec2::{Ec2Config, Ec2Provisioner};
use coordinator::provision::{start_worker, Provisioner};
use coordinator::reaper::{reap, Policy};
use job_model::store::dynamodb::DynamoStore;
use job_model::{
    Change, Command, ErrorBody, Expect, Job, JobSpec, JobStatus, JobStore, Market, Owner, Timestamp,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// EC2 with no spot capacity: every spot `RunInstances` is answered as EC2 answers when a zone
/// has no spot capacity of the type (HTTP 500, `InsufficientInstanceCapacity`), which moto never
/// does. The request is turned into a harmless `DescribeRegions` before it leaves, so moto
/// starts nothing, and its answer into EC2's refusal, so the provisioner reads exactly what the
/// SDK gives it for the real one.
#[derive(Debug, Clone, Default)]
struct NoSpotCapacity {
    on: Arc<AtomicBool>,
    this_call: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

const REFUSAL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
    <Code>InsufficientInstanceCapacity</Code><Message>We currently do not have sufficient \
    t3.micro capacity in the Availability Zone you requested (us-east-1a).</Message></Error>\
    </Errors><RequestID>7c2e1f3a-0000-4000-8000-000000000001</RequestID></Response>";

impl Intercept for NoSpotCapacity {
    fn name(&self) -> &'static str {
        "no spot capacity"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let spot = context
            .input()
            .downcast_ref::<RunInstancesInput>()
            .and_then(|r| r.instance_market_options())
            .and_then(|m| m.market_type())
            == Some(&MarketType::Spot);
        self.this_call
            .store(spot && self.on.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.this_call.load(Ordering::SeqCst) {
            let body = "Action=DescribeRegions&Version=2016-11-15";
            let request = context.request_mut();
            *request.body_mut() = body.into();
            request
                .headers_mut()
                .insert("content-length", body.len().to_string());
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.this_call.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let response = context.response_mut();
            *response.status_mut() = 500_u16.try_into()?;
            *response.body_mut() = REFUSAL.into();
        }
        Ok(())
    }
}

fn ago(secs: u64) -> Timestamp {
    Timestamp::from_unix_millis(
        Timestamp::now().unix_millis() - i64::try_from(secs * 1000).unwrap_or(0),
    )
}

fn job() -> Job {
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
        Timestamp::now(),
        job_model::job::DEFAULT_RETENTION,
    )
}

/// The job's instances in moto that are not terminated, with their lifecycle.
async fn instances(
    ec2: &aws_sdk_ec2::Client,
    job_id: &str,
) -> Vec<(String, Option<InstanceLifecycleType>)> {
    ec2.describe_instances()
        .filters(Filter::builder().name("tag:JobId").values(job_id).build())
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .expect("describe")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_owned(),
                i.instance_lifecycle().cloned(),
            )
        })
        .collect()
}

async fn claim(store: &DynamoStore, job_id: &str, instance: &str) -> Job {
    store
        .transition(
            job_id,
            Expect::status(JobStatus::Provisioning),
            Change::to(JobStatus::Running, Timestamp::now()).instance(instance),
        )
        .await
        .expect("claim")
}

#[tokio::test]
async fn spot_first_on_demand_when_refused_and_a_lost_spot_worker_is_replaced() {
    let moto = moto_harness::Moto::shared();
    let cfg = moto.sdk_config().await;
    let plain = aws_sdk_ec2::Client::new(&cfg);
    let template = moto_harness::ec2::worker_launch_template(&plain).await;
    let refusals = NoSpotCapacity::default();
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&cfg)
            .interceptor(refusals.clone())
            .build(),
    );
    let table = moto_harness::unique("replication-jobs");
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&cfg), &table);
    store.create_table().await.expect("table");
    let p = Ec2Provisioner::new(
        ec2,
        Ec2Config {
            launch_template: template,
            launch_template_version: "$Latest".into(),
            subnet_ids: Vec::new(),
            default_instance_type: Some("t3.micro".into()),
            use_spot: true,
            jobs_table: table.clone(),
            grants: None,
        },
    );

    // No spot capacity: the job gets an on-demand worker, and its record says why.
    refusals.on.store(true, Ordering::SeqCst);
    let refused = job();
    store.create(&refused, None).await.expect("create");
    assert_eq!(p.plan(&refused).market, Market::Spot, "spot is asked first");
    let status = start_worker(&store, &p, &refused).await.expect("start");
    assert_eq!(status, JobStatus::Provisioning);
    assert!(
        refusals.refused.load(Ordering::SeqCst) >= 1,
        "spot was asked"
    );
    let rec = store.get(&refused.job_id).await.expect("get").expect("job");
    assert_eq!(rec.workers.len(), 1, "{:?}", rec.workers);
    let w = &rec.workers[0];
    assert_eq!(
        (w.market, w.instance_type.as_str()),
        (Market::OnDemand, "t3.micro")
    );
    assert!(
        w.on_demand_because
            .as_deref()
            .is_some_and(|b| b.contains("spot capacity refused: InsufficientInstanceCapacity")),
        "{w:?}"
    );
    let live = instances(&plain, &refused.job_id).await;
    assert_eq!(live.len(), 1, "one worker, no stray spot request: {live:?}");
    assert_eq!(live[0].0, w.instance_id);
    assert_ne!(live[0].1, Some(InstanceLifecycleType::Spot));
    p.terminate(&refused.job_id).await.expect("terminate");

    // Spot capacity: a spot worker; its instance goes away under the running job; the reaper
    // gives the job its next worker, which finishes it.
    refusals.on.store(false, Ordering::SeqCst);
    let lost = job();
    store.create(&lost, None).await.expect("create");
    start_worker(&store, &p, &lost).await.expect("start");
    let first = store.get(&lost.job_id).await.expect("get").expect("job");
    let spot = first.workers[0].clone();
    assert_eq!(
        (spot.market, spot.on_demand_because.as_deref()),
        (Market::Spot, None)
    );
    let live = instances(&plain, &lost.job_id).await;
    assert_eq!(
        live,
        vec![(spot.instance_id.clone(), Some(InstanceLifecycleType::Spot))]
    );
    claim(&store, &lost.job_id, &spot.instance_id).await;
    store
        .heartbeat(&lost.job_id, &spot.instance_id, None, ago(600))
        .await
        .expect("beat");
    plain
        .terminate_instances()
        .instance_ids(&spot.instance_id)
        .send()
        .await
        .expect("the instance goes away");
    let policy = Policy {
        orphan_grace: Duration::ZERO,
        ..Policy::default()
    };
    let report = reap(&store, &p, &policy, Timestamp::now()).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.relaunched, vec![lost.job_id.clone()]);
    let second = store.get(&lost.job_id).await.expect("get").expect("job");
    assert_eq!(
        (second.status, second.attempt),
        (JobStatus::Provisioning, 2)
    );
    assert_eq!(second.workers.len(), 2, "{:?}", second.workers);
    let next = second.workers[1].clone();
    assert_ne!(next.instance_id, spot.instance_id);
    assert_eq!(
        second.instance_id.as_deref(),
        Some(next.instance_id.as_str())
    );
    claim(&store, &lost.job_id, &next.instance_id).await;
    let done = store
        .transition(
            &lost.job_id,
            Expect::status(JobStatus::Running),
            Change::to(JobStatus::Completed, Timestamp::now()),
        )
        .await
        .expect("the next worker finishes the job");
    let usage = job_model::cost::usage(&done, Timestamp::now()).expect("usage");
    assert!(!usage.ongoing);
    assert_eq!(usage.workers.len(), 2);
    assert_eq!(usage.workers[0].ended_at, Some(next.launched_at));
    assert_eq!(usage.workers[0].run.market, Market::Spot);
    assert!(
        usage.instance_hours > 0.0 && usage.cost_usd.is_some(),
        "{usage:?}"
    );
    p.terminate(&lost.job_id).await.expect("terminate");

    // A job whose spot worker was reclaimed goes on on-demand, and says so.
    let mut reclaimed = job();
    reclaimed.attempt = 2;
    reclaimed.error = Some(ErrorBody::new("interrupted", "spot reclaim"));
    let plan = p.plan(&reclaimed);
    assert_eq!(plan.market, Market::OnDemand);
    assert!(
        plan.on_demand_because
            .as_deref()
            .is_some_and(|b| b.contains("reclaimed")),
        "{plan:?}"
    );
    let launched = p.launch(&reclaimed).await.expect("launch");
    assert_eq!(launched.market, Market::OnDemand);
    assert_eq!(launched.on_demand_because, plan.on_demand_because);
    assert_ne!(
        instances(&plain, &reclaimed.job_id).await[0].1,
        Some(InstanceLifecycleType::Spot)
    );
    p.terminate(&reclaimed.job_id).await.expect("terminate");
}

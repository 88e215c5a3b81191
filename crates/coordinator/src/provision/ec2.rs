//! Workers as EC2 instances, launched from the operator's launch template.
//!
//! The launch template (Terraform's) carries the AMI, instance profile, IMDSv2, encrypted root
//! volume, security group and `InstanceInitiatedShutdownBehavior=terminate`; a launch adds only
//! what is per job: the instance type, the subnet, spot or on-demand, the tags and the user
//! data (job id and table name, never a credential). Termination and listing only ever touch
//! instances tagged `ManagedBy=seren-replication-system`, which is also what the IAM policy
//! allows.

use async_trait::async_trait;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceStateName,
    InstanceType, LaunchTemplateSpecification, MarketType, ResourceType, ShutdownBehavior,
    SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use base64::Engine as _;
use job_model::{Job, Market, Timestamp, WorkerRun};

use super::grant::WorkerGrants;
use super::{
    instance_type_for, Plan, ProvisionError, Provisioner, Worker, JOB_ID_TAG, MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
};

/// How workers are launched.
#[derive(Debug, Clone)]
pub struct Ec2Config {
    /// Launch template id (`lt-…`) or name.
    pub launch_template: String,
    /// Launch template version (`$Default`, `$Latest` or a number).
    pub launch_template_version: String,
    /// Subnets to try in order (empty: the template's or the default VPC's).
    pub subnet_ids: Vec<String>,
    /// Instance type when the job asks for none (else chosen by the source's size).
    pub default_instance_type: Option<String>,
    /// Ask for spot capacity first, falling back to on-demand.
    pub use_spot: bool,
    /// The DynamoDB table the worker reads its job from (written into the user data).
    pub jobs_table: String,
    /// Per-worker KMS grants (see [`super::grant`]); without them the worker role needs a
    /// standing `kms:Decrypt` on the sealing key.
    pub grants: Option<WorkerGrants>,
}

/// Launches, finds and terminates worker instances.
#[derive(Debug, Clone)]
pub struct Ec2Provisioner {
    client: Client,
    config: Ec2Config,
}

const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// Why a job's worker is on-demand after a spot reclaim.
const RECLAIMED_BEFORE: &str = "its spot worker was reclaimed before";

/// Error codes that mean "no capacity of this kind here now": try on-demand or another subnet.
const CAPACITY_CODES: [&str; 6] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InsufficientFreeAddressesInSubnet",
    "Unsupported",
];

fn backend<E, R>(op: &str, e: &SdkError<E, R>) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let retryable = matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_))
        || e.as_service_error()
            .and_then(ProvideErrorMetadata::code)
            .is_some_and(|c| c == "RequestLimitExceeded" || c.starts_with("Throttl"));
    ProvisionError::Backend {
        message: format!("EC2 {op}: {}", DisplayErrorContext(e)),
        retryable,
    }
}

/// The user data for a job's instance: a shell script that writes the worker's environment
/// file and starts the systemd unit. Job ids are UUIDs and table names are
/// `[A-Za-z0-9_.-]`, so nothing here needs quoting; both are checked anyway.
///
/// # Errors
/// When the job id or table name has a character outside those sets.
pub fn user_data(job_id: &str, table: &str) -> Result<String, ProvisionError> {
    let safe = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !safe(job_id) || !safe(table) {
        return Err(ProvisionError::Config(
            "job id and table name must be [A-Za-z0-9_.-]".into(),
        ));
    }
    Ok(format!(
        "#!/bin/sh\n\
         # postgres-seren-replicator worker: job id and table name only, never credentials.\n\
         set -eu\n\
         mkdir -p /etc/seren-worker\n\
         cat > /etc/seren-worker/job.env <<'EOF'\n\
         SEREN_JOB_ID={job_id}\n\
         SEREN_JOBS_TABLE={table}\n\
         EOF\n\
         systemctl start --no-block seren-worker.service\n"
    ))
}

/// Read `KEY=VALUE` lines of the environment file back out of [`user_data`] (for tools that
/// play the EC2 fleet in tests).
pub fn parse_user_data(script: &str) -> Vec<(String, String)> {
    script
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("SEREN_") && !k.contains(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

impl Ec2Provisioner {
    /// A provisioner using `client`.
    pub fn new(client: Client, config: Ec2Config) -> Self {
        Self { client, config }
    }

    /// How it launches.
    pub fn config(&self) -> &Ec2Config {
        &self.config
    }

    /// One instance as EC2 describes it; `None` when EC2 no longer knows it (terminated
    /// instances stay visible for about an hour).
    async fn instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<aws_sdk_ec2::types::Instance>, ProvisionError> {
        match self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .next()
                .cloned()),
            Err(e)
                if e.as_service_error()
                    .and_then(ProvideErrorMetadata::code)
                    .is_some_and(|c| c.starts_with("InvalidInstanceID")) =>
            {
                Ok(None)
            }
            Err(e) => Err(backend("DescribeInstances", &e)),
        }
    }

    async fn describe(&self, job_id: Option<&str>) -> Result<Vec<Worker>, ProvisionError> {
        let mut req = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{MANAGED_BY_TAG}"))
                    .values(MANAGED_BY_VALUE)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(LIVE_STATES.iter().map(|s| (*s).to_owned()).collect()))
                    .build(),
            );
        if let Some(id) = job_id {
            req = req.filters(
                Filter::builder()
                    .name(format!("tag:{JOB_ID_TAG}"))
                    .values(id)
                    .build(),
            );
        }
        let mut workers = Vec::new();
        let mut pages = req.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend("DescribeInstances", &e))?;
            for inst in page.reservations().iter().flat_map(|r| r.instances()) {
                let live = inst.state().and_then(|s| s.name()).is_some_and(|n| {
                    !matches!(
                        n,
                        InstanceStateName::Terminated | InstanceStateName::ShuttingDown
                    )
                });
                let Some(id) = inst.instance_id() else {
                    continue;
                };
                if !live {
                    continue;
                }
                workers.push(Worker {
                    instance_id: id.to_owned(),
                    job_id: inst
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(JOB_ID_TAG))
                        .and_then(|t| t.value())
                        .map(str::to_owned),
                    launched_at: inst.launch_time().map(timestamp),
                    instance_type: inst.instance_type().map(|t| t.as_str().to_owned()),
                    market: Some(market_of(inst)),
                });
            }
        }
        Ok(workers)
    }

    async fn run(
        &self,
        job: &Job,
        instance_type: &str,
        subnet: Option<&str>,
        spot: bool,
        attempt: usize,
    ) -> Result<
        Option<(String, Option<Timestamp>)>,
        SdkError<
            aws_sdk_ec2::operation::run_instances::RunInstancesError,
            aws_sdk_ec2::config::http::HttpResponse,
        >,
    > {
        let template = if self.config.launch_template.starts_with("lt-") {
            LaunchTemplateSpecification::builder().launch_template_id(&self.config.launch_template)
        } else {
            LaunchTemplateSpecification::builder()
                .launch_template_name(&self.config.launch_template)
        }
        .version(&self.config.launch_template_version)
        .build();
        let tags = vec![
            tag("Name", &format!("seren-replication-{}", job.job_id)),
            tag(JOB_ID_TAG, &job.job_id),
            tag(MANAGED_BY_TAG, MANAGED_BY_VALUE),
        ];
        let user_data = user_data(&job.job_id, &self.config.jobs_table)
            .map(|u| base64::engine::general_purpose::STANDARD.encode(u))
            .unwrap_or_default();
        let token = client_token(job, attempt);
        let mut req = self
            .client
            .run_instances()
            .launch_template(template)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .client_token(token)
            .user_data(user_data)
            // The template sets this too; a worker's power-off must end its instance even if
            // the template is edited.
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags.clone()))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(tags))
                    .build(),
            )
            .set_subnet_id(subnet.map(str::to_owned));
        if spot {
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        let out = req.send().await?;
        Ok(out.instances().first().and_then(|i| {
            i.instance_id()
                .filter(|id| !id.is_empty())
                .map(|id| (id.to_owned(), i.launch_time().map(timestamp)))
        }))
    }
}

fn timestamp(t: &aws_sdk_ec2::primitives::DateTime) -> Timestamp {
    Timestamp::from_unix_millis(t.to_millis().unwrap_or(0))
}

fn market_of(inst: &aws_sdk_ec2::types::Instance) -> Market {
    match inst.instance_lifecycle() {
        Some(aws_sdk_ec2::types::InstanceLifecycleType::Spot) => Market::Spot,
        _ => Market::OnDemand,
    }
}

#[async_trait]
impl Provisioner for Ec2Provisioner {
    fn plan(&self, job: &Job) -> Plan {
        let instance_type = instance_type_for(job, self.config.default_instance_type.as_deref());
        // A job whose spot worker was reclaimed before goes on on-demand: the next one could
        // be reclaimed as well, and each interruption costs the work since the last unit.
        // Once on-demand for that reason, it stays so (a later loss of another kind does not
        // send it back to spot).
        let reclaimed_before = job.attempt > 1
            && (job.error.as_ref().is_some_and(|e| e.code == "interrupted")
                || job
                    .workers
                    .iter()
                    .any(|w| w.on_demand_because.as_deref() == Some(RECLAIMED_BEFORE)));
        let (market, on_demand_because) = match (self.config.use_spot, reclaimed_before) {
            (true, false) => (Market::Spot, None),
            (true, true) => (Market::OnDemand, Some(RECLAIMED_BEFORE.to_owned())),
            (false, _) => (Market::OnDemand, None),
        };
        Plan {
            instance_type,
            market,
            on_demand_because,
        }
    }

    async fn launch(&self, job: &Job) -> Result<WorkerRun, ProvisionError> {
        // AWS makes a repeated ClientToken idempotent; look first anyway, so that a retried
        // launch never makes a second worker even where the token is not honoured.
        let plan = self.plan(job);
        if let Some(w) = self.describe(Some(&job.job_id)).await?.into_iter().next() {
            // Its grant may not have been made (the earlier launch stopped in between); a
            // grant of the same name and parameters is not made twice.
            if let Some(g) = &self.config.grants {
                g.create(&job.job_id, &w.instance_id).await?;
            }
            return Ok(WorkerRun {
                instance_id: w.instance_id,
                instance_type: w.instance_type.unwrap_or(plan.instance_type),
                market: w.market.unwrap_or(plan.market),
                on_demand_because: None,
                launched_at: w.launched_at.unwrap_or_else(Timestamp::now),
            });
        }
        let instance_type = plan.instance_type;
        let subnets: Vec<Option<&str>> = if self.config.subnet_ids.is_empty() {
            vec![None]
        } else {
            self.config
                .subnet_ids
                .iter()
                .map(|s| Some(s.as_str()))
                .collect()
        };
        let markets: &[bool] = if plan.market == Market::Spot {
            &[true, false]
        } else {
            &[false]
        };
        let mut last = String::new();
        // Why the first on-demand try is on-demand: the plan's reason, or spot's refusal.
        let mut on_demand_because = plan.on_demand_because;
        let mut spot_refusal = None;
        let mut attempt = 0;
        for &spot in markets {
            if !spot && on_demand_because.is_none() {
                on_demand_because = spot_refusal.take();
            }
            for subnet in &subnets {
                match self.run(job, &instance_type, *subnet, spot, attempt).await {
                    Ok(Some((id, launched_at))) => {
                        tracing::info!(job_id = %job.job_id, instance_id = %id, %instance_type, spot, "launched worker");
                        if let Some(g) = &self.config.grants {
                            if let Err(e) = g.create(&job.job_id, &id).await {
                                // A worker that cannot open its job is no use: take it back.
                                let _ = self.terminate_instance(&id).await;
                                return Err(e);
                            }
                        }
                        return Ok(WorkerRun {
                            instance_id: id,
                            instance_type,
                            market: if spot { Market::Spot } else { Market::OnDemand },
                            on_demand_because: if spot { None } else { on_demand_because },
                            launched_at: launched_at.unwrap_or_else(Timestamp::now),
                        });
                    }
                    Ok(None) => {
                        return Err(ProvisionError::Backend {
                            message: "EC2 RunInstances returned no instance".into(),
                            retryable: true,
                        })
                    }
                    Err(e) => {
                        let code = e
                            .as_service_error()
                            .and_then(ProvideErrorMetadata::code)
                            .unwrap_or_default()
                            .to_owned();
                        if CAPACITY_CODES.contains(&code.as_str()) {
                            tracing::warn!(job_id = %job.job_id, %code, spot, subnet = subnet.unwrap_or("-"), "no capacity, trying the next option");
                            last = format!("{code} for {instance_type}");
                            if spot {
                                spot_refusal = Some(format!(
                                    "spot capacity refused: {code} for {instance_type}"
                                ));
                            }
                            attempt += 1;
                            continue;
                        }
                        return Err(match code.as_str() {
                            "InvalidLaunchTemplateId.NotFound"
                            | "InvalidLaunchTemplateName.NotFoundException"
                            | "InvalidParameterValue"
                            | "UnauthorizedOperation" => ProvisionError::Config(format!(
                                "EC2 RunInstances: {}",
                                DisplayErrorContext(&e)
                            )),
                            _ => backend("RunInstances", &e),
                        });
                    }
                }
            }
        }
        Err(ProvisionError::Capacity(last))
    }

    async fn terminate(&self, job_id: &str) -> Result<Vec<String>, ProvisionError> {
        let ids: Vec<String> = self
            .describe(Some(job_id))
            .await?
            .into_iter()
            .map(|w| w.instance_id)
            .collect();
        if !ids.is_empty() {
            self.client
                .terminate_instances()
                .set_instance_ids(Some(ids.clone()))
                .send()
                .await
                .map_err(|e| backend("TerminateInstances", &e))?;
            tracing::info!(%job_id, instances = ?ids, "terminated workers");
        }
        if let Some(g) = &self.config.grants {
            g.revoke_job(job_id).await?;
        }
        Ok(ids)
    }

    async fn terminate_instance(&self, instance_id: &str) -> Result<(), ProvisionError> {
        // Only an instance that carries our tag: the listing is the scope check.
        let ours = self
            .describe(None)
            .await?
            .into_iter()
            .any(|w| w.instance_id == instance_id);
        if ours {
            self.client
                .terminate_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .map_err(|e| backend("TerminateInstances", &e))?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Worker>, ProvisionError> {
        self.describe(None).await
    }

    async fn is_gone(&self, instance_id: &str) -> Result<bool, ProvisionError> {
        Ok(self
            .instance(instance_id)
            .await?
            .and_then(|i| i.state().and_then(|s| s.name()).cloned())
            .is_none_or(|n| {
                matches!(
                    n,
                    InstanceStateName::Terminated | InstanceStateName::Stopped
                )
            }))
    }

    async fn why_gone(&self, instance_id: &str) -> Result<Option<super::Gone>, ProvisionError> {
        // Long gone from EC2's memory: nothing to say.
        let Some(inst) = self.instance(instance_id).await? else {
            return Ok(None);
        };
        let gone = inst.state().and_then(|s| s.name()).is_some_and(|n| {
            matches!(
                n,
                InstanceStateName::Terminated
                    | InstanceStateName::ShuttingDown
                    | InstanceStateName::Stopped
                    | InstanceStateName::Stopping
            )
        });
        Ok(gone.then(|| {
            super::Gone::from_ec2_state_reason(inst.state_reason().and_then(|r| r.code()))
        }))
    }

    async fn sweep(&self, now: Timestamp) -> Result<Vec<String>, ProvisionError> {
        let Some(g) = &self.config.grants else {
            return Ok(Vec::new());
        };
        // Grants first, instances second: a grant made in between belongs to an instance
        // the second listing already holds.
        let grants = g.list().await?;
        if grants.is_empty() {
            return Ok(Vec::new());
        }
        let live: Vec<String> = self
            .describe(None)
            .await?
            .into_iter()
            .map(|w| w.instance_id)
            .collect();
        g.sweep(grants, &live, now, std::time::Duration::from_secs(10 * 60))
            .await
    }
}

/// The RunInstances client token of `job`'s `try_no`-th launch request (another market or
/// subnet after a capacity refusal). One token per distinct request: AWS refuses a token reused
/// with other parameters, and answers a reused one with the instance it made for it, terminated
/// or not. The first worker's first try is the job id itself; a later worker of the job (after
/// one was lost) has tokens of its own. At most 64 characters (a UUID is 36).
fn client_token(job: &Job, try_no: usize) -> String {
    let base = if job.attempt > 1 {
        format!("{}-a{}", job.job_id, job.attempt)
    } else {
        job.job_id.clone()
    };
    if try_no == 0 {
        base
    } else {
        format!("{base}-{try_no}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_of_a_job_and_each_try_has_its_own_client_token() {
        let mut job = crate::provision::test_job(job_model::Options::default());
        let first = client_token(&job, 0);
        assert_eq!(first, job.job_id);
        let mut seen = std::collections::HashSet::new();
        for attempt in 1..=job_model::job::MAX_ATTEMPTS_LIMIT {
            job.attempt = attempt;
            for try_no in 0..6 {
                let t = client_token(&job, try_no);
                assert!(t.len() <= 64, "{t}");
                assert!(seen.insert(t.clone()), "{t} used twice");
            }
        }
    }

    #[test]
    fn user_data_holds_job_id_and_table_only() {
        let ud = user_data("0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11", "replication-jobs")
            .expect("user data");
        assert_eq!(
            parse_user_data(&ud),
            vec![
                (
                    "SEREN_JOB_ID".into(),
                    "0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11".into()
                ),
                ("SEREN_JOBS_TABLE".into(), "replication-jobs".into()),
            ]
        );
        assert!(user_data("x; rm -rf /", "t").is_err());
        assert!(user_data("x", "t$(id)").is_err());
    }
}

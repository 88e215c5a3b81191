//! What a remote job's worker costs: the price list, the model behind a dry run's estimate
//! (instance type, duration, cost on demand and on spot) and the instance-hours a job's workers
//! really used, with what they imply.
//!
//! The model, written out in docs/cost.md with the measurements behind it:
//!
//! - **duration** = [`BOOT_SECONDS`] (launch until the worker claims the job) + the source's
//!   size ÷ the throughput. The size is `pg_database_size` of the source as the client read it;
//!   the throughput defaults to [`DEFAULT_THROUGHPUT_BYTES_PER_SEC`], the slowest of our
//!   benchmark's three sets on 2 cores (the operator can set the deployment's own figure);
//! - **billed time**: EC2 bills per second with a one-minute minimum;
//! - **cost** = billed hours × the instance type's hourly price: on-demand from [`PRICES`]
//!   (AWS list prices for Linux in us-east-1, [`PRICES_AS_OF`]), spot taken as
//!   [`SPOT_SHARE`] of it (the typical discount; the spot price moves by type, zone and hour).
//!
//! Nothing here calls AWS: prices differ by region and change, which is why every figure says
//! what it is based on.

use serde::{Deserialize, Serialize};

use crate::job::{Job, Market, Timestamp, WorkerRun};
use crate::status::JobStatus;

/// When [`PRICES`] were read.
pub const PRICES_AS_OF: &str = "2026-12";
/// Where [`PRICES`] apply.
pub const PRICES_REGION: &str = "us-east-1";
/// A spot hour as a share of the on-demand hour (typically 60 % off).
pub const SPOT_SHARE: f64 = 0.4;
/// Seconds from launch until the worker claims its job (boot, then the service starts):
/// 1 to 2 minutes, the upper end taken.
pub const BOOT_SECONDS: u64 = 120;
/// EC2's shortest billed time per instance.
pub const MINIMUM_BILLED_SECONDS: u64 = 60;
/// Bytes of source database per second a copy sustains unless the operator says otherwise:
/// 60 MB/s, the slowest of the three sets of our benchmark (docs/performance.md: 10.9 GB in
/// 182 s, 4.7 GB in 52 s, 0.81 GB in 13.9 s on 2 cores, both servers on the same machine).
pub const DEFAULT_THROUGHPUT_BYTES_PER_SEC: u64 = 60_000_000;

/// On-demand USD per hour, Linux, [`PRICES_REGION`], [`PRICES_AS_OF`]: every type the
/// coordinator allows by default, and the small ones tests use.
pub const PRICES: &[(&str, f64)] = &[
    ("t3.micro", 0.0104),
    ("t3.small", 0.0208),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3.xlarge", 0.1664),
    ("t3.2xlarge", 0.3328),
    ("c5.large", 0.085),
    ("c5.xlarge", 0.17),
    ("c5.2xlarge", 0.34),
    ("c5.4xlarge", 0.68),
    ("c6i.large", 0.085),
    ("c6i.xlarge", 0.17),
    ("c6i.2xlarge", 0.34),
    ("c6i.4xlarge", 0.68),
    ("c7i.large", 0.08925),
    ("c7i.xlarge", 0.1785),
    ("c7i.2xlarge", 0.357),
    ("c7i.4xlarge", 0.714),
    ("m5.large", 0.096),
    ("m5.xlarge", 0.192),
    ("m5.2xlarge", 0.384),
    ("m5.4xlarge", 0.768),
    ("m6i.large", 0.096),
    ("m6i.xlarge", 0.192),
    ("m6i.2xlarge", 0.384),
    ("m6i.4xlarge", 0.768),
    ("m7i.large", 0.1008),
    ("m7i.xlarge", 0.2016),
    ("m7i.2xlarge", 0.4032),
    ("m7i.4xlarge", 0.8064),
    ("r6i.large", 0.126),
    ("r6i.xlarge", 0.252),
    ("r6i.2xlarge", 0.504),
    ("r6i.4xlarge", 1.008),
];

/// What the prices are, in one line for every figure that uses them.
pub fn price_basis() -> String {
    format!(
        "AWS list prices for Linux in {PRICES_REGION} as of {PRICES_AS_OF}; spot taken as {:.0} % \
         of on-demand (the spot price moves)",
        SPOT_SHARE * 100.0
    )
}

/// USD per hour of `instance_type` bought on `market`; `None` when the type is not in
/// [`PRICES`]; 0 for a local worker.
pub fn hourly(instance_type: &str, market: Market) -> Option<f64> {
    if market == Market::Local {
        return Some(0.0);
    }
    let on_demand = PRICES
        .iter()
        .find(|(t, _)| *t == instance_type)
        .map(|(_, p)| *p)?;
    Some(match market {
        Market::Spot => on_demand * SPOT_SHARE,
        _ => on_demand,
    })
}

/// Seconds EC2 bills for an instance that ran `seconds`.
pub fn billed_seconds(seconds: u64) -> u64 {
    seconds.max(MINIMUM_BILLED_SECONDS)
}

fn dollars(per_hour: f64, seconds: u64) -> f64 {
    // Whole cents are too coarse for a five-minute t3.medium; keep a tenth of a cent.
    (per_hour * seconds as f64 / 3600.0 * 1000.0).round() / 1000.0
}

/// What a job would cost, before it starts (`init --remote --dry-run`, `POST /estimates`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The instance type the coordinator would launch.
    pub instance_type: String,
    /// How the first worker would be bought.
    pub market: Market,
    /// The source's size as the client read it (`pg_database_size`); `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_size_bytes: Option<u64>,
    /// The throughput the duration assumes, bytes of source database per second.
    pub throughput_bytes_per_sec: u64,
    /// Seconds from launch until the worker starts copying.
    pub boot_seconds: u64,
    /// Seconds of copying (size ÷ throughput); `None` when the size is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_seconds: Option<u64>,
    /// Seconds billed: boot and copy, at least EC2's minimum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_seconds: Option<u64>,
    /// USD per hour on demand; `None` when the type's price is not known here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_per_hour_usd: Option<f64>,
    /// USD per hour on spot (estimated from the on-demand price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_per_hour_usd: Option<f64>,
    /// The whole worker on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_usd: Option<f64>,
    /// The whole worker on spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_usd: Option<f64>,
    /// What the prices are ([`price_basis`]).
    pub prices: String,
}

/// The estimate for a worker of `instance_type` bought on `market` copying a source of
/// `size_bytes` at `throughput` bytes per second.
pub fn estimate(
    instance_type: &str,
    market: Market,
    size_bytes: Option<u64>,
    throughput: u64,
) -> Estimate {
    let throughput = throughput.max(1);
    let boot = if market == Market::Local {
        0
    } else {
        BOOT_SECONDS
    };
    let copy_seconds = size_bytes.map(|b| b.div_ceil(throughput));
    let billed = copy_seconds.map(|c| billed_seconds(boot + c));
    let (od, spot) = if market == Market::Local {
        (Some(0.0), Some(0.0))
    } else {
        (
            hourly(instance_type, Market::OnDemand),
            hourly(instance_type, Market::Spot),
        )
    };
    let cost = |rate: Option<f64>| Some(dollars(rate?, billed?));
    Estimate {
        instance_type: instance_type.to_owned(),
        market,
        source_size_bytes: size_bytes,
        throughput_bytes_per_sec: throughput,
        boot_seconds: boot,
        copy_seconds,
        billed_seconds: billed,
        on_demand_per_hour_usd: od,
        spot_per_hour_usd: spot,
        on_demand_usd: cost(od),
        spot_usd: cost(spot),
        prices: price_basis(),
    }
}

/// One worker's share of a job: how long its instance ran and what that cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerUsage {
    /// The worker.
    #[serde(flatten)]
    pub run: WorkerRun,
    /// When it stopped counting: the next worker's launch, or the job's end; `None` while it
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Seconds billed (EC2's one-minute minimum included).
    pub billed_seconds: u64,
    /// What they cost; `None` when the type's price is not known here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// The instance time a job used, worker by worker, and what it implies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Each worker, first first.
    pub workers: Vec<WorkerUsage>,
    /// Billed instance-hours of all of them (local workers count none).
    pub instance_hours: f64,
    /// Their cost; `None` when a worker's price is not known here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Whether a worker still runs (the figures grow).
    pub ongoing: bool,
    /// What the prices are ([`price_basis`]).
    pub prices: String,
}

/// What `job`'s workers used up to `now`: each from its launch until the next worker's launch
/// or the end of the job (a job waiting for its next worker: the moment its last one was
/// given up). Launch to claim is counted, as EC2 bills it; the seconds an instance takes to
/// shut down after its job ended are not. `None` for a job that never had a worker.
pub fn usage(job: &Job, now: Timestamp) -> Option<Usage> {
    if job.workers.is_empty() {
        return None;
    }
    let last_end = if job.status.is_terminal() {
        job.finished_at.or(Some(job.updated_at))
    } else if job.status == JobStatus::Pending {
        Some(job.updated_at)
    } else {
        None
    };
    // A job waiting for its next worker goes on costing: it is not done.
    let ongoing = !job.status.is_terminal();
    let mut workers = Vec::with_capacity(job.workers.len());
    let mut hours = 0.0;
    let mut total = Some(0.0);
    for (i, run) in job.workers.iter().enumerate() {
        let ended_at = job
            .workers
            .get(i + 1)
            .map(|next| next.launched_at)
            .or(last_end);
        let until = ended_at.unwrap_or(now);
        let ran = until.since(run.launched_at).as_secs();
        let (billed, cost) = if run.market == Market::Local {
            (ran, Some(0.0))
        } else {
            let billed = billed_seconds(ran);
            hours += billed as f64 / 3600.0;
            (
                billed,
                hourly(&run.instance_type, run.market).map(|p| dollars(p, billed)),
            )
        };
        total = match (total, cost) {
            (Some(t), Some(c)) => Some(t + c),
            _ => None,
        };
        workers.push(WorkerUsage {
            run: run.clone(),
            ended_at,
            billed_seconds: billed,
            cost_usd: cost,
        });
    }
    Some(Usage {
        workers,
        instance_hours: (hours * 1000.0).round() / 1000.0,
        cost_usd: total.map(|t| (t * 1000.0).round() / 1000.0),
        ongoing,
        prices: price_basis(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobSpec, Owner};
    use std::time::Duration;

    #[test]
    fn the_estimate_follows_the_model() {
        // 300 GB at 60 MB/s: 5,000 s of copy, 120 s of boot.
        let e = estimate(
            "c5.2xlarge",
            Market::Spot,
            Some(300_000_000_000),
            60_000_000,
        );
        assert_eq!(e.copy_seconds, Some(5000));
        assert_eq!(e.billed_seconds, Some(5120));
        assert_eq!(e.on_demand_per_hour_usd, Some(0.34));
        assert_eq!(e.on_demand_usd, Some(0.484));
        assert_eq!(e.spot_usd, Some(0.193));
        assert!(e.prices.contains("us-east-1"), "{}", e.prices);
        // A tiny database is billed EC2's minimum.
        let tiny = estimate("t3.medium", Market::Spot, Some(1), 60_000_000);
        assert_eq!(tiny.billed_seconds, Some(121));
        // Unknown size: no duration, no cost; unknown type: no price.
        let unknown = estimate("c5.xlarge", Market::OnDemand, None, 60_000_000);
        assert_eq!((unknown.copy_seconds, unknown.on_demand_usd), (None, None));
        assert_eq!(unknown.on_demand_per_hour_usd, Some(0.17));
        let exotic = estimate("x2iedn.32xlarge", Market::Spot, Some(1 << 30), 60_000_000);
        assert!(exotic.copy_seconds.is_some());
        assert_eq!((exotic.on_demand_usd, exotic.spot_usd), (None, None));
        // A local worker costs nothing and needs no boot.
        let local = estimate("local", Market::Local, Some(6_000_000_000), 60_000_000);
        assert_eq!(
            (local.boot_seconds, local.copy_seconds, local.on_demand_usd),
            (0, Some(100), Some(0.0))
        );
    }

    fn job_with(workers: Vec<WorkerRun>) -> Job {
        let mut j = Job::new(
            Job::new_id(),
            Owner("k".into()),
            JobSpec {
                command: crate::Command::Init,
                filter: Default::default(),
                options: Default::default(),
            },
            (vec![], vec![]),
            (String::new(), String::new()),
            None,
            Timestamp::from_unix_millis(1_800_000_000_000),
            Duration::from_secs(3600),
        );
        j.workers = workers;
        j
    }

    fn run(id: &str, t: &str, market: Market, at_s: i64) -> WorkerRun {
        WorkerRun {
            instance_id: id.into(),
            instance_type: t.into(),
            market,
            on_demand_because: None,
            launched_at: Timestamp::from_unix_millis(1_800_000_000_000 + at_s * 1000),
        }
    }

    #[test]
    fn usage_counts_each_worker_until_the_next_one_or_the_end() {
        let t0 = 1_800_000_000_000;
        // A spot worker lost after 30 minutes, an on-demand one that finished the job 90
        // minutes after its launch.
        let mut j = job_with(vec![
            run("i-1", "c5.xlarge", Market::Spot, 0),
            run("i-2", "c5.xlarge", Market::OnDemand, 1800),
        ]);
        j.status = JobStatus::Completed;
        j.finished_at = Some(Timestamp::from_unix_millis(t0 + 7200 * 1000));
        let u = usage(&j, Timestamp::from_unix_millis(t0 + 99_999_000)).expect("usage");
        assert!(!u.ongoing);
        assert_eq!(u.workers[0].billed_seconds, 1800);
        assert_eq!(u.workers[1].billed_seconds, 5400);
        assert_eq!(u.workers[0].cost_usd, Some(0.034)); // 0.5 h × 0.17 × 0.4
        assert_eq!(u.workers[1].cost_usd, Some(0.255)); // 1.5 h × 0.17
        assert_eq!(u.instance_hours, 2.0);
        assert_eq!(u.cost_usd, Some(0.289));

        // Still running: counted until now; waiting for its next worker: until it was given up.
        let mut running = job_with(vec![run("i-1", "t3.medium", Market::OnDemand, 0)]);
        running.status = JobStatus::Running;
        let u = usage(&running, Timestamp::from_unix_millis(t0 + 600_000)).expect("usage");
        assert!(u.ongoing);
        assert_eq!(u.workers[0].ended_at, None);
        assert_eq!(u.workers[0].billed_seconds, 600);
        running.status = JobStatus::Pending;
        running.updated_at = Timestamp::from_unix_millis(t0 + 300_000);
        let u = usage(&running, Timestamp::from_unix_millis(t0 + 600_000)).expect("usage");
        assert!(u.ongoing, "the next worker is about to be billed");
        assert_eq!(u.workers[0].billed_seconds, 300);

        // A type without a price: hours yes, cost no. A local worker: neither hours nor cost.
        let mut exotic = job_with(vec![run("i-1", "x1.32xlarge", Market::Spot, 0)]);
        exotic.status = JobStatus::Failed;
        exotic.finished_at = Some(Timestamp::from_unix_millis(t0 + 10_000));
        let u = usage(&exotic, Timestamp::now()).expect("usage");
        assert_eq!((u.workers[0].billed_seconds, u.cost_usd), (60, None));
        let mut local = job_with(vec![run("local-1", "local", Market::Local, 0)]);
        local.status = JobStatus::Completed;
        local.finished_at = Some(Timestamp::from_unix_millis(t0 + 10_000));
        let u = usage(&local, Timestamp::now()).expect("usage");
        assert_eq!((u.instance_hours, u.cost_usd), (0.0, Some(0.0)));
        assert!(usage(&job_with(vec![]), Timestamp::now()).is_none());
    }
}

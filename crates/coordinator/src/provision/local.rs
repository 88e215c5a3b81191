//! Workers as processes on this machine, for the local stack (no AWS).
//!
//! Each job gets one process of the configured program with `SEREN_JOB_ID` in its environment
//! (the same variable the EC2 user data writes) plus the configured variables (store path, key
//! file). Its instance id is `local-<pid>`, which the worker can compute for itself.
//!
//! Workers outlive the coordinator: after a restart the new process adopts the workers of the
//! same stack that its predecessor started, found in `/proc` by their environment (the job id
//! and every configured variable, such as the store's path), so that the reaper and cancels can
//! still stop them. A provisioner configured without variables adopts nothing, since nothing
//! would tell its workers from another stack's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use job_model::{Job, Market, Timestamp, WorkerRun};
use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::{Plan, ProvisionError, Provisioner, Worker};

/// The instance type a local worker is recorded with.
const LOCAL: &str = "local";

fn local_run(instance_id: &str, launched_at: Timestamp) -> WorkerRun {
    WorkerRun {
        instance_id: instance_id.to_owned(),
        instance_type: LOCAL.into(),
        market: Market::Local,
        on_demand_because: None,
        launched_at,
    }
}

/// How worker processes are started.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The worker program (`seren-worker`).
    pub program: PathBuf,
    /// Arguments before anything per job.
    pub args: Vec<String>,
    /// Environment added for every worker (store location, key file …; no secrets).
    pub env: Vec<(String, String)>,
    /// Where each worker's output goes (`<job_id>.log`); discarded when `None`.
    pub log_dir: Option<PathBuf>,
    /// How long a worker has to stop after SIGTERM before it gets SIGKILL.
    pub stop_grace: Duration,
}

struct Running {
    child: Child,
    instance_id: String,
    launched_at: Timestamp,
}

/// Starts and stops local worker processes.
#[derive(Clone)]
pub struct LocalProvisioner {
    config: LocalConfig,
    workers: Arc<Mutex<HashMap<String, Running>>>,
}

impl std::fmt::Debug for LocalProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvisioner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LocalProvisioner {
    /// A provisioner with `config`.
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config,
            workers: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn alive(r: &mut Running) -> bool {
    matches!(r.child.try_wait(), Ok(None))
}

/// A process's environment, when it is readable (ours, or any as root).
fn environ(p: &procfs::process::Process) -> Option<HashMap<String, String>> {
    let env = p.environ().ok()?;
    Some(
        env.into_iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect(),
    )
}

/// Whether a process exists and has not exited (a zombie has).
fn running(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .and_then(|p| p.stat().ok())
        .is_some_and(|stat| stat.state != 'Z' && stat.state != 'X')
}

impl LocalProvisioner {
    /// Running workers of this stack that this provisioner did not start: `(pid, job_id)`.
    fn adopted(&self, known: &HashMap<String, Running>) -> Vec<(u32, String)> {
        if self.config.env.is_empty() {
            return Vec::new();
        }
        let ours: std::collections::HashSet<String> =
            known.values().map(|r| r.instance_id.clone()).collect();
        let Ok(processes) = procfs::process::all_processes() else {
            return Vec::new();
        };
        processes
            .flatten()
            .filter_map(|p| {
                let pid = u32::try_from(p.pid()).ok()?;
                if ours.contains(&format!("local-{pid}")) || !running(pid) {
                    return None;
                }
                let env = environ(&p)?;
                let has = |k: &str, v: &str| env.get(k).is_some_and(|ev| ev == v);
                if !self.config.env.iter().all(|(k, v)| has(k, v)) {
                    return None;
                }
                Some((pid, env.get("SEREN_JOB_ID")?.clone()))
            })
            .collect()
    }

    /// Stop an adopted worker: SIGTERM, then SIGKILL after the grace period.
    fn stop_adopted(&self, pid: u32) {
        let grace = self.config.stop_grace;
        tokio::spawn(async move {
            signal(pid, Signal::TERM);
            let deadline = tokio::time::Instant::now() + grace;
            while running(pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if running(pid) {
                signal(pid, Signal::KILL);
            }
        });
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        // Gone already is fine: the worker ended on its own.
        let _ = kill_process(pid, sig);
    }
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    fn plan(&self, _job: &Job) -> Plan {
        Plan {
            instance_type: LOCAL.into(),
            market: Market::Local,
            on_demand_because: None,
        }
    }

    async fn launch(&self, job: &Job) -> Result<WorkerRun, ProvisionError> {
        let mut workers = self.workers.lock().await;
        if let Some(r) = workers.get_mut(&job.job_id) {
            if alive(r) {
                return Ok(local_run(&r.instance_id, r.launched_at));
            }
        }
        let (stdout, stderr) = match &self.config.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ProvisionError::Config(format!("create {}: {e}", dir.display()))
                })?;
                let path = dir.join(format!("{}.log", job.job_id));
                let f = std::fs::File::create(&path).map_err(|e| {
                    ProvisionError::Config(format!("create {}: {e}", path.display()))
                })?;
                let g = f
                    .try_clone()
                    .map_err(|e| ProvisionError::Config(format!("open {}: {e}", path.display())))?;
                (Stdio::from(f), Stdio::from(g))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(&self.config.program)
            .args(&self.config.args)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env("SEREN_JOB_ID", &job.job_id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                ProvisionError::Config(format!(
                    "start worker {}: {e}",
                    self.config.program.display()
                ))
            })?;
        let pid = child.id().unwrap_or_default();
        let instance_id = format!("local-{pid}");
        tracing::info!(job_id = %job.job_id, %instance_id, "started local worker");
        let launched_at = Timestamp::now();
        workers.insert(
            job.job_id.clone(),
            Running {
                child,
                instance_id: instance_id.clone(),
                launched_at,
            },
        );
        Ok(local_run(&instance_id, launched_at))
    }

    async fn terminate(&self, job_id: &str) -> Result<Vec<String>, ProvisionError> {
        let running = {
            let mut workers = self.workers.lock().await;
            match workers.remove(job_id) {
                Some(mut r) => {
                    if !alive(&mut r) {
                        return Ok(Vec::new());
                    }
                    r
                }
                None => {
                    // Perhaps started before this coordinator's restart.
                    let mut stopped = Vec::new();
                    for (pid, _) in self
                        .adopted(&workers)
                        .into_iter()
                        .filter(|(_, j)| j == job_id)
                    {
                        self.stop_adopted(pid);
                        stopped.push(format!("local-{pid}"));
                    }
                    return Ok(stopped);
                }
            }
        };
        let Running {
            mut child,
            instance_id,
            ..
        } = running;
        if let Some(pid) = child.id() {
            signal(pid, Signal::TERM);
        }
        let grace = self.config.stop_grace;
        tokio::spawn(async move {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        });
        Ok(vec![instance_id])
    }

    async fn terminate_instance(&self, instance_id: &str) -> Result<(), ProvisionError> {
        let job = {
            let workers = self.workers.lock().await;
            workers
                .iter()
                .find(|(_, r)| r.instance_id == instance_id)
                .map(|(j, _)| j.clone())
        };
        if let Some(job) = job {
            self.terminate(&job).await?;
            return Ok(());
        }
        let adopted = {
            let workers = self.workers.lock().await;
            self.adopted(&workers)
        };
        if let Some((pid, _)) = adopted
            .into_iter()
            .find(|(pid, _)| format!("local-{pid}") == instance_id)
        {
            self.stop_adopted(pid);
        }
        Ok(())
    }

    async fn is_gone(&self, instance_id: &str) -> Result<bool, ProvisionError> {
        let Some(pid) = instance_id
            .strip_prefix("local-")
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            return Ok(true);
        };
        // Reaped by the task `terminate` left waiting on it (or by its own exit).
        Ok(rustix::process::test_kill_process(pid).is_err())
    }

    async fn list(&self) -> Result<Vec<Worker>, ProvisionError> {
        let mut workers = self.workers.lock().await;
        workers.retain(|_, r| alive(r));
        let adopted = self.adopted(&workers);
        Ok(workers
            .iter()
            .map(|(job, r)| Worker {
                instance_id: r.instance_id.clone(),
                job_id: Some(job.clone()),
                launched_at: Some(r.launched_at),
                instance_type: Some(LOCAL.into()),
                market: Some(Market::Local),
            })
            .chain(adopted.into_iter().map(|(pid, job)| Worker {
                instance_id: format!("local-{pid}"),
                job_id: Some(job),
                launched_at: None,
                instance_type: Some(LOCAL.into()),
                market: Some(Market::Local),
            }))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(stack: &str) -> LocalConfig {
        LocalConfig {
            program: "sleep".into(),
            args: vec!["300".into()],
            env: vec![(
                "SEREN_SQLITE_PATH".into(),
                format!("/nonexistent/{stack}.db"),
            )],
            log_dir: None,
            stop_grace: Duration::from_secs(2),
        }
    }

    fn job() -> Job {
        super::super::test_job(job_model::Options::default())
    }

    #[tokio::test]
    async fn a_restarted_coordinator_adopts_its_stacks_workers_and_stops_them() {
        let stack = Job::new_id();
        let before = LocalProvisioner::new(config(&stack));
        let (a, b) = (job(), job());
        let instance_a = before.launch(&a).await.expect("launch a").instance_id;
        let instance_b = before.launch(&b).await.expect("launch b").instance_id;

        // The same stack after a restart: it knows the workers from their environment.
        let after = LocalProvisioner::new(config(&stack));
        let mut listed: Vec<(String, Option<String>)> = after
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|w| (w.instance_id, w.job_id))
            .collect();
        listed.sort();
        let mut want = vec![
            (instance_a.clone(), Some(a.job_id.clone())),
            (instance_b.clone(), Some(b.job_id.clone())),
        ];
        want.sort();
        assert_eq!(listed, want);
        // Another stack's provisioner adopts none of them.
        let other = LocalProvisioner::new(config("another-stack"));
        assert!(other.list().await.expect("list").is_empty());

        assert_eq!(
            after.terminate(&a.job_id).await.expect("terminate"),
            vec![instance_a.clone()]
        );
        after
            .terminate_instance(&instance_b)
            .await
            .expect("terminate instance");
        // Both processes end (`before` reaps them, being their parent).
        for _ in 0..50 {
            if before.list().await.expect("list").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            before.list().await.expect("list").is_empty(),
            "both stopped"
        );
        assert!(after.list().await.expect("list").is_empty());
    }
}

//! Workers as processes on this machine, for the local stack (no AWS).
//!
//! Each job gets one process of the configured program with `SEREN_JOB_ID` in its environment
//! (the same variable the EC2 user data writes) plus the configured variables (store path, key
//! file). Its instance id is `local-<pid>`, which the worker can compute for itself. Only
//! processes started by this provisioner, in this coordinator process, are known to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use job_model::{Job, Timestamp};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::{ProvisionError, Provisioner, Worker};

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

async fn signal(pid: u32, sig: &str) {
    // `kill(1)` rather than libc: this crate forbids unsafe code.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    async fn launch(&self, job: &Job) -> Result<String, ProvisionError> {
        let mut workers = self.workers.lock().await;
        if let Some(r) = workers.get_mut(&job.job_id) {
            if alive(r) {
                return Ok(r.instance_id.clone());
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
        workers.insert(
            job.job_id.clone(),
            Running {
                child,
                instance_id: instance_id.clone(),
                launched_at: Timestamp::now(),
            },
        );
        Ok(instance_id)
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
                None => return Ok(Vec::new()),
            }
        };
        let Running {
            mut child,
            instance_id,
            ..
        } = running;
        if let Some(pid) = child.id() {
            signal(pid, "TERM").await;
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
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Worker>, ProvisionError> {
        let mut workers = self.workers.lock().await;
        workers.retain(|_, r| alive(r));
        Ok(workers
            .iter()
            .map(|(job, r)| Worker {
                instance_id: r.instance_id.clone(),
                job_id: Some(job.clone()),
                launched_at: Some(r.launched_at),
            })
            .collect())
    }
}

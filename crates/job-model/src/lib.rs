//! The model of a remote job, shared by the CLI, the coordinator and the worker: the one
//! definition of every wire and stored type, the job state machine, and the two ports that hold
//! a job's state and its secrets.
//!
//! - [`status`]: [`JobStatus`] and the transitions it allows (terminal statuses never change).
//! - [`job`]: [`Job`], [`JobSpec`], [`Progress`], [`ErrorBody`], timestamps and owners.
//! - [`api`]: the HTTP request and response bodies.
//! - [`store`]: the [`JobStore`] port; SQLite (feature `local`) and DynamoDB (feature `aws`).
//! - [`item`]: the DynamoDB item codec with the attribute names operators query (feature `aws`).
//! - [`seal`]: the [`Sealer`] port for connection URLs; a key file (feature `local`) and KMS
//!   (feature `aws`).
//! - [`cost`]: what a worker costs: the price list, the duration model behind a dry run's
//!   estimate, and the instance-hours of a job's workers.
//! - [`conninfo`]: connection URLs ([`ConnUrl`]): parsing, redaction, the rule for a URL a remote
//!   worker can use; [`filter`]: table patterns and row filters ([`Filter`]). The CLI, the
//!   coordinator, the worker and the engine check what a job names with this one code.
//!
//! This crate must not depend on an HTTP framework or on the engine; without features its only
//! I/O is what libpq reads for a local URL (`PG*` variables, the password file), so the CLI and
//! the coordinator can use it cheaply.

pub mod api;
#[cfg(all(feature = "aws", feature = "local"))]
pub mod backends;
pub mod conninfo;
pub mod cost;
pub mod filter;
#[cfg(feature = "aws")]
pub mod item;
pub mod job;
pub mod report;
pub mod seal;
pub mod status;
pub mod store;

pub use conninfo::{ConnUrl, RemoteUrlError, Secret, SslMode};
pub use filter::{Filter, FilterError, QualName};
pub use job::{
    Command, CopyFormat, ErrorBody, FilterSpec, Job, JobSpec, Market, OptionProblem, Options,
    Owner, Progress, Retry, SyncChoice, Timestamp, WorkerRun,
};
pub use seal::{SealError, Sealer};
pub use status::JobStatus;
pub use store::{Change, Created, Cursor, Expect, JobStore, Page, ReconciledCount, StoreError};

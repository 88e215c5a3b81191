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
//!
//! This crate must not depend on an HTTP framework or on the engine; without features it has
//! no I/O at all, so the CLI can use the wire types cheaply.

pub mod api;
#[cfg(all(feature = "aws", feature = "local"))]
pub mod backends;
#[cfg(feature = "aws")]
pub mod item;
pub mod job;
pub mod report;
pub mod seal;
pub mod status;
pub mod store;

pub use job::{
    Command, CopyFormat, ErrorBody, FilterSpec, Job, JobSpec, OptionProblem, Options, Owner,
    Progress, SecretString, Timestamp,
};
pub use seal::{SealError, Sealer};
pub use status::JobStatus;
pub use store::{Change, Created, Cursor, Expect, JobStore, Page, ReconciledCount, StoreError};

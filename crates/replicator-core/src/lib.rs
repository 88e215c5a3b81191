//! The engine of postgres-seren-replicator: copies a live PostgreSQL database into another
//! under one consistent snapshot, with PostgreSQL's own tools for DDL and a COPY stream of
//! our own for the rows.
//!
//! The CLI runs it in-process; the worker runs it on a remote machine. It reports progress as
//! [`progress::Event`]s through a callback and knows nothing about either caller. This crate
//! must not depend on AWS or HTTP frameworks. From the job model (`job-model`, no I/O) it takes
//! what a job names, parsed once for every caller: connection URLs ([`conninfo`]), table
//! filters ([`filter`]), the wire options ([`spec`]) and the typed reports.

pub mod catalog;
pub mod checks;
pub mod connect;
pub mod copy;
pub mod cutover;
pub mod database;
pub mod error;
pub mod init;
pub mod plan;
pub mod progress;
pub mod replication;
pub mod schema;
pub mod snapshot;
pub mod spec;
pub mod sql;
pub mod sync;
pub mod target;
pub mod validate;
pub mod verify;

pub use conninfo::{ConnUrl, Secret, SslMode};
pub use error::{Error, Result, Side};
pub use filter::{Filter, QualName};
pub use init::{init, init_until, inspect_target, FormatChoice, InitOptions, InitReport};
/// Connection URLs, shared with the CLI and the coordinator.
pub use job_model::conninfo;
/// Table patterns and row filters, shared with the CLI and the coordinator.
pub use job_model::filter;
pub use progress::{Event, Observer, Phase};
pub use target::TargetState;

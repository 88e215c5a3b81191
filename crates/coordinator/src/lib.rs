//! The control plane's coordinator: the HTTP API as one axum [`Router`](axum::Router) (served
//! by `lambda_http` in Lambda and by axum on one machine), the [`Provisioner`] port with its EC2
//! and local-process adapters, and the [`reaper`].
//!
//! Jobs, their wire types, the store and sealer ports, and the parsers of connection URLs and
//! table filters all come from `job-model`; the engine (`replicator-core`, with its database
//! driver and TLS stack) is not linked here. The coordinator never connects to a database and
//! never holds a URL's password longer than it takes to seal it.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod lambda;
pub mod provision;
pub mod reaper;
pub mod validate;

pub use api::{app, AppState, Settings};
pub use auth::{hash_key, ApiKeys};
pub use error::ApiError;
pub use provision::{ProvisionError, Provisioner, Worker};

//! Choosing the store and sealer from configuration: DynamoDB and KMS when their names are
//! given, else the SQLite file and the local key file. Shared by the coordinator and the worker
//! so that both always open the same backends from the same settings.

use std::path::PathBuf;
use std::sync::Arc;

use crate::seal::{KmsSealer, LocalSealer, SealError};
use crate::store::dynamodb::DynamoStore;
use crate::store::retry::{Backoff, Retrying};
use crate::store::sqlite::SqliteStore;
use crate::store::StoreError;
use crate::{JobStore, Sealer};

/// An open store and sealer.
pub type Backends = (Arc<dyn JobStore>, Arc<dyn Sealer>);

/// Where jobs and the sealing key are.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// DynamoDB table; SQLite when `None`.
    pub jobs_table: Option<String>,
    /// The SQLite file.
    pub sqlite_path: PathBuf,
    /// KMS key. URLs are sealed with KMS when this is set or jobs are in DynamoDB (a worker
    /// opens without the key id); with the local key file otherwise.
    pub kms_key_id: Option<String>,
    /// The local key file.
    pub seal_key_file: PathBuf,
}

/// What opening the backends can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The store.
    #[error("open the job store {path}: {source}")]
    Store {
        /// Which file.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The sealer.
    #[error("open the sealing key: {0}")]
    Seal(#[from] SealError),
}

impl BackendConfig {
    /// Whether AWS clients are needed.
    pub fn needs_aws(&self) -> bool {
        self.jobs_table.is_some() || self.kms_key_id.is_some()
    }

    /// The store and sealer. `aws` must be given when [`BackendConfig::needs_aws`]. Store calls
    /// are retried under [`Backoff::REQUEST`] when the backend says trying again may help.
    ///
    /// # Errors
    /// When the SQLite file or the key file cannot be opened.
    pub fn open(&self, aws: Option<&aws_config::SdkConfig>) -> Result<Backends, BackendError> {
        let store: Arc<dyn JobStore> = match (&self.jobs_table, aws) {
            (Some(table), Some(cfg)) => Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(cfg),
                table.clone(),
            )),
            _ => Arc::new(SqliteStore::open(&self.sqlite_path).map_err(|source| {
                BackendError::Store {
                    path: self.sqlite_path.display().to_string(),
                    source,
                }
            })?),
        };
        let store = Retrying::shared(store, Backoff::REQUEST);
        let sealer: Arc<dyn Sealer> = match (&self.kms_key_id, &self.jobs_table, aws) {
            (Some(key), _, Some(cfg)) => {
                Arc::new(KmsSealer::new(aws_sdk_kms::Client::new(cfg), key.clone()))
            }
            (None, Some(_), Some(cfg)) => {
                Arc::new(KmsSealer::opener(aws_sdk_kms::Client::new(cfg)))
            }
            _ => Arc::new(LocalSealer::open_or_create(&self.seal_key_file)?),
        };
        Ok((store, sealer))
    }
}

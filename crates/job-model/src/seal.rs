//! The `Sealer` port: connection URLs are sealed before they are stored and opened only by the
//! worker that runs the job.
//!
//! A sealed URL is bound to its job id and to the field it is stored in: KMS takes both as the
//! encryption context `{"job_id": …, "field": "source_url" | "target_url"}` (so IAM can restrict
//! a worker to its own job's key material); the local sealer takes them as the AEAD's associated
//! data. A blob moved to another job's record does not open, and neither does one moved to the
//! other field of the same record: whoever can write a job's item cannot make the worker take
//! the target for the source (and, with `drop_existing`, drop the real source).

use async_trait::async_trait;

use crate::conninfo::Secret;

/// Which of a job's secrets a blob holds: part of what it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The source database's URL.
    SourceUrl,
    /// The target database's URL.
    TargetUrl,
}

impl Field {
    /// The name in the encryption context (the job record's attribute, without `_secret`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SourceUrl => "source_url",
            Self::TargetUrl => "target_url",
        }
    }
}

/// What sealing can fail with. Messages never contain the plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The blob was not sealed for this job, or was altered, or the key differs.
    #[error("sealed value for job {job_id} does not open: {reason}")]
    Open {
        /// The job.
        job_id: String,
        /// Why.
        reason: String,
    },
    /// The key (file or KMS key) cannot be used.
    #[error("sealing key: {0}")]
    Key(String),
    /// The backend failed.
    #[error("sealer: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// Whether trying again may help.
        retryable: bool,
    },
}

/// Seals and opens secrets for one job.
#[async_trait]
pub trait Sealer: Send + Sync + std::fmt::Debug {
    /// Encrypt `plaintext` bound to `job_id` and `field`. Each call gives a different blob.
    ///
    /// # Errors
    /// When the key is unusable or the backend fails.
    async fn seal(
        &self,
        job_id: &str,
        field: Field,
        plaintext: &Secret,
    ) -> Result<Vec<u8>, SealError>;

    /// Decrypt a blob sealed for `job_id` and `field`.
    ///
    /// # Errors
    /// [`SealError::Open`] when the blob was sealed for another job or field, altered, or
    /// under another key.
    async fn open(&self, job_id: &str, field: Field, sealed: &[u8]) -> Result<Secret, SealError>;
}

#[cfg(feature = "local")]
pub use local::LocalSealer;

#[cfg(feature = "local")]
mod local {
    use std::fs;
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    use std::path::{Path, PathBuf};

    use async_trait::async_trait;
    use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
    use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

    use super::{Field, SealError, Sealer};
    use crate::conninfo::Secret;

    /// `SLX2`: bound to job id and field (`SLX1` blobs, bound to the job id only, are refused).
    const MAGIC: &[u8; 4] = b"SLX2";

    fn associated(job_id: &str, field: Field) -> Vec<u8> {
        format!("{job_id}\0{}", field.as_str()).into_bytes()
    }
    const NONCE_LEN: usize = 24;

    /// Seals with XChaCha20-Poly1305 under a 32-byte key kept in a file readable only by its
    /// owner (mode 0600), created on first use. Blob: `SLX2` ‖ 24-byte random nonce ‖
    /// ciphertext with tag; associated data: the job id, a NUL and the field's name.
    pub struct LocalSealer {
        cipher: XChaCha20Poly1305,
        path: PathBuf,
    }

    impl std::fmt::Debug for LocalSealer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LocalSealer")
                .field("path", &self.path)
                .finish_non_exhaustive()
        }
    }

    impl LocalSealer {
        /// Use the key in `path`, creating it (mode 0600) when the file does not exist.
        ///
        /// # Errors
        /// [`SealError::Key`] when the file cannot be read or written, is not 32 bytes, or is
        /// readable by group or others.
        pub fn open_or_create(path: &Path) -> Result<Self, SealError> {
            let key_err = |what: &str, e: std::io::Error| {
                SealError::Key(format!("{what} {}: {e}", path.display()))
            };
            let bytes = match fs::read(path) {
                Ok(b) => {
                    let mode = fs::metadata(path)
                        .map_err(|e| key_err("inspect", e))?
                        .permissions()
                        .mode();
                    if mode & 0o077 != 0 {
                        return Err(SealError::Key(format!(
                            "{} is readable by other users (mode {:o}); run chmod 600 on it",
                            path.display(),
                            mode & 0o777
                        )));
                    }
                    b
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(|e| key_err("create", e))?;
                    f.write_all(&key).map_err(|e| key_err("write", e))?;
                    f.sync_all().map_err(|e| key_err("sync", e))?;
                    key.to_vec()
                }
                Err(e) => return Err(key_err("read", e)),
            };
            if bytes.len() != 32 {
                return Err(SealError::Key(format!(
                    "{} holds {} bytes; a key is 32",
                    path.display(),
                    bytes.len()
                )));
            }
            Ok(Self {
                cipher: XChaCha20Poly1305::new(Key::from_slice(&bytes)),
                path: path.to_owned(),
            })
        }
    }

    #[async_trait]
    impl Sealer for LocalSealer {
        async fn seal(
            &self,
            job_id: &str,
            field: Field,
            plaintext: &Secret,
        ) -> Result<Vec<u8>, SealError> {
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let aad = associated(job_id, field);
            let ct = self
                .cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: plaintext.expose().as_bytes(),
                        aad: &aad,
                    },
                )
                .map_err(|_| SealError::Key("encryption failed".into()))?;
            let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ct);
            Ok(out)
        }

        async fn open(
            &self,
            job_id: &str,
            field: Field,
            sealed: &[u8],
        ) -> Result<Secret, SealError> {
            let bad = |reason: &str| SealError::Open {
                job_id: job_id.to_owned(),
                reason: reason.to_owned(),
            };
            let rest = sealed
                .strip_prefix(MAGIC.as_slice())
                .ok_or_else(|| bad("not sealed by the local sealer"))?;
            if rest.len() < NONCE_LEN {
                return Err(bad("truncated"));
            }
            let (nonce, ct) = rest.split_at(NONCE_LEN);
            let pt = self
                .cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: &associated(job_id, field),
                    },
                )
                .map_err(|_| {
                    bad("sealed for another job or field, altered, or under another key")
                })?;
            String::from_utf8(pt)
                .map(Secret::new)
                .map_err(|_| bad("not text"))
        }
    }
}

#[cfg(feature = "aws")]
pub use kms::{KmsSealer, CONTEXT_FIELD, CONTEXT_JOB_ID};

#[cfg(feature = "aws")]
mod kms {
    use async_trait::async_trait;
    use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
    use aws_sdk_kms::primitives::Blob;
    use aws_sdk_kms::Client;

    use super::{Field, SealError, Sealer};
    use crate::conninfo::Secret;

    /// The encryption context keys, which IAM conditions and grants name.
    pub const CONTEXT_JOB_ID: &str = "job_id";
    /// See [`CONTEXT_JOB_ID`].
    pub const CONTEXT_FIELD: &str = "field";

    /// Seals with AWS KMS `Encrypt`/`Decrypt` under one key, encryption context
    /// `{"job_id": …, "field": …}`.
    #[derive(Debug, Clone)]
    pub struct KmsSealer {
        client: Client,
        key_id: Option<String>,
    }

    impl KmsSealer {
        /// A sealer using `key_id` (key id, ARN or alias) through `client`.
        pub fn new(client: Client, key_id: impl Into<String>) -> Self {
            Self {
                client,
                key_id: Some(key_id.into()),
            }
        }

        /// A sealer that only opens: KMS finds the key from the ciphertext, so a worker needs
        /// no key id, only permission to decrypt with its job's encryption context.
        pub fn opener(client: Client) -> Self {
            Self {
                client,
                key_id: None,
            }
        }
    }

    fn backend<E, R>(op: &str, e: SdkError<E, R>) -> SealError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let retryable = matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_))
            || e.as_service_error()
                .and_then(ProvideErrorMetadata::code)
                .is_some_and(|c| {
                    matches!(
                        c,
                        "ThrottlingException"
                            | "KMSInternalException"
                            | "DependencyTimeoutException"
                            // A grant just made can take a moment to apply.
                            | "AccessDeniedException"
                    )
                });
        SealError::Backend {
            message: format!("KMS {op}: {}", DisplayErrorContext(&e)),
            retryable,
        }
    }

    #[async_trait]
    impl Sealer for KmsSealer {
        async fn seal(
            &self,
            job_id: &str,
            field: Field,
            plaintext: &Secret,
        ) -> Result<Vec<u8>, SealError> {
            let key_id = self.key_id.as_deref().ok_or_else(|| {
                SealError::Key("sealing with KMS needs a key id (SEREN_KMS_KEY_ID)".into())
            })?;
            let out = self
                .client
                .encrypt()
                .key_id(key_id)
                .plaintext(Blob::new(plaintext.expose().as_bytes()))
                .encryption_context(CONTEXT_JOB_ID, job_id)
                .encryption_context(CONTEXT_FIELD, field.as_str())
                .send()
                .await
                .map_err(|e| backend("Encrypt", e))?;
            out.ciphertext_blob
                .map(Blob::into_inner)
                .ok_or_else(|| SealError::Key("KMS Encrypt returned no ciphertext".into()))
        }

        async fn open(
            &self,
            job_id: &str,
            field: Field,
            sealed: &[u8],
        ) -> Result<Secret, SealError> {
            let out = self
                .client
                .decrypt()
                .set_key_id(self.key_id.clone())
                .ciphertext_blob(Blob::new(sealed))
                .encryption_context(CONTEXT_JOB_ID, job_id)
                .encryption_context(CONTEXT_FIELD, field.as_str())
                .send()
                .await
                .map_err(|e| {
                    let code = e.as_service_error().and_then(ProvideErrorMetadata::code);
                    if matches!(
                        code,
                        Some("InvalidCiphertextException" | "IncorrectKeyException")
                    ) {
                        SealError::Open {
                            job_id: job_id.to_owned(),
                            reason: format!(
                                "KMS refused it ({}): sealed for another job, field or key",
                                code.unwrap_or_default()
                            ),
                        }
                    } else {
                        backend("Decrypt", e)
                    }
                })?;
            let pt = out
                .plaintext
                .map(Blob::into_inner)
                .ok_or_else(|| SealError::Key("KMS Decrypt returned no plaintext".into()))?;
            String::from_utf8(pt)
                .map(Secret::new)
                .map_err(|_| SealError::Open {
                    job_id: job_id.to_owned(),
                    reason: "not text".into(),
                })
        }
    }
}

#[cfg(all(test, feature = "local"))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn local_sealer_binds_to_the_job_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seal.key");
        let sealer = LocalSealer::open_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let url = Secret::new("postgresql://u:p%3B%26%26@h/db");
        let src = Field::SourceUrl;
        let a = sealer.seal("job-a", src, &url).await.expect("seal");
        let b = sealer.seal("job-a", src, &url).await.expect("seal");
        assert_ne!(a, b, "nonces differ");
        assert!(!String::from_utf8_lossy(&a).contains("p%3B"));
        assert_eq!(sealer.open("job-a", src, &a).await.expect("open"), url);
        // Another job's record.
        let err = sealer.open("job-b", src, &a).await.expect_err("wrong job");
        assert!(matches!(err, SealError::Open { .. }), "{err}");
        // The other field of the same record: a swapped source and target.
        let err = sealer
            .open("job-a", Field::TargetUrl, &a)
            .await
            .expect_err("wrong field");
        assert!(matches!(err, SealError::Open { .. }), "{err}");
        // Reopened from the same file: same key.
        let again = LocalSealer::open_or_create(&path).expect("reopen");
        assert_eq!(again.open("job-a", src, &b).await.expect("open"), url);
        // Another key.
        let other = LocalSealer::open_or_create(&dir.path().join("other.key")).expect("other");
        assert!(other.open("job-a", src, &a).await.is_err());
        // A flipped bit.
        let mut c = a.clone();
        let last = c.len() - 1;
        c[last] ^= 1;
        assert!(sealer.open("job-a", src, &c).await.is_err());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seal.key");
        LocalSealer::open_or_create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = LocalSealer::open_or_create(&path).expect_err("too open");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}

//! Per-worker KMS grants: each EC2 worker may decrypt only its own job's URLs.
//!
//! The worker role carries no standing `kms:Decrypt`. When the coordinator launches an
//! instance it creates a grant on the sealing key whose grantee is that instance's role
//! session (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/INSTANCE_ID`; EC2 names the session after
//! the instance), whose only operation is `Decrypt` and whose constraint is the encryption
//! context `{"job_id": JOB_ID}`. Another worker, holding the same role under another session,
//! cannot use it, and the grant opens nothing sealed for another job. Grants are revoked when
//! the job's workers are terminated, and the reaper revokes any whose instance is gone.

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::{GrantConstraints, GrantListEntry, GrantOperation};
use aws_sdk_kms::Client;
use job_model::Timestamp;

use super::ProvisionError;

/// Prefix of every grant name this system creates; the rest is the job id.
pub const GRANT_NAME_PREFIX: &str = "seren-job-";

/// How workers get their grant.
#[derive(Debug, Clone)]
pub struct WorkerGrants {
    client: Client,
    key_id: String,
    /// `arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/`, to which the instance id is appended.
    session_prefix: String,
}

fn backend<E, R>(op: &str, e: &SdkError<E, R>) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.as_service_error().and_then(ProvideErrorMetadata::code);
    let message = format!("KMS {op}: {}", DisplayErrorContext(e));
    if matches!(
        code,
        Some("AccessDeniedException" | "NotFoundException" | "InvalidArnException")
    ) {
        return ProvisionError::Config(message);
    }
    let retryable = matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_))
        || code.is_some_and(|c| {
            matches!(
                c,
                "ThrottlingException" | "KMSInternalException" | "DependencyTimeoutException"
            )
        });
    ProvisionError::Backend { message, retryable }
}

/// The assumed-role session ARN prefix of an IAM role ARN
/// (`arn:aws:iam::123456789012:role/some/path/name` → `arn:aws:sts::123456789012:assumed-role/name/`).
///
/// # Errors
/// When `role_arn` is not an IAM role ARN.
pub fn session_prefix(role_arn: &str) -> Result<String, ProvisionError> {
    let bad = || {
        ProvisionError::Config(format!(
            "SEREN_WORKER_ROLE_ARN must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), not {role_arn:?}"
        ))
    };
    let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts.as_slice() else {
        return Err(bad());
    };
    let name = resource
        .strip_prefix("role/")
        .and_then(|r| r.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .ok_or_else(bad)?;
    if *arn != "arn"
        || *service != "iam"
        || !region.is_empty()
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
        || partition.is_empty()
    {
        return Err(bad());
    }
    Ok(format!(
        "arn:{partition}:sts::{account}:assumed-role/{name}/"
    ))
}

impl WorkerGrants {
    /// Grants on `key_id` for sessions of the role `role_arn`.
    ///
    /// # Errors
    /// When `role_arn` is not an IAM role ARN.
    pub fn new(
        client: Client,
        key_id: impl Into<String>,
        role_arn: &str,
    ) -> Result<Self, ProvisionError> {
        Ok(Self {
            client,
            key_id: key_id.into(),
            session_prefix: session_prefix(role_arn)?,
        })
    }

    /// The grantee of `instance_id`'s grant.
    pub fn grantee(&self, instance_id: &str) -> String {
        format!("{}{instance_id}", self.session_prefix)
    }

    /// Let `instance_id` decrypt what was sealed for `job_id`, and nothing else.
    ///
    /// # Errors
    /// When KMS refuses or fails.
    pub async fn create(&self, job_id: &str, instance_id: &str) -> Result<(), ProvisionError> {
        self.client
            .create_grant()
            .key_id(&self.key_id)
            .grantee_principal(self.grantee(instance_id))
            .operations(GrantOperation::Decrypt)
            .constraints(
                GrantConstraints::builder()
                    // Both of the job's blobs (source and target field), nothing else.
                    .encryption_context_subset(job_model::seal::CONTEXT_JOB_ID, job_id)
                    .build(),
            )
            .name(format!("{GRANT_NAME_PREFIX}{job_id}"))
            .send()
            .await
            .map_err(|e| backend("CreateGrant", &e))?;
        tracing::info!(%job_id, %instance_id, "granted the worker its job's URLs");
        Ok(())
    }

    /// Every grant this system made on the key.
    ///
    /// # Errors
    /// When KMS fails.
    pub async fn list(&self) -> Result<Vec<GrantListEntry>, ProvisionError> {
        let mut grants = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_grants()
                .key_id(&self.key_id)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| backend("ListGrants", &e))?;
            grants.extend(
                page.grants()
                    .iter()
                    .filter(|g| g.name().is_some_and(|n| n.starts_with(GRANT_NAME_PREFIX)))
                    .cloned(),
            );
            match (page.truncated(), page.next_marker()) {
                (true, Some(m)) => marker = Some(m.to_owned()),
                _ => return Ok(grants),
            }
        }
    }

    async fn revoke(&self, grant: &GrantListEntry) -> Result<(), ProvisionError> {
        let Some(id) = grant.grant_id() else {
            return Ok(());
        };
        match self
            .client
            .revoke_grant()
            .key_id(&self.key_id)
            .grant_id(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Revoked meanwhile (another reaper pass): the goal holds.
            Err(e)
                if e.as_service_error()
                    .and_then(ProvideErrorMetadata::code)
                    .is_some_and(|c| c == "NotFoundException") =>
            {
                Ok(())
            }
            Err(e) => Err(backend("RevokeGrant", &e)),
        }
    }

    /// Revoke every grant made for `job_id`; returns how many.
    ///
    /// # Errors
    /// When KMS fails.
    pub async fn revoke_job(&self, job_id: &str) -> Result<usize, ProvisionError> {
        let name = format!("{GRANT_NAME_PREFIX}{job_id}");
        let mut n = 0;
        for g in self.list().await? {
            if g.name() == Some(name.as_str()) {
                self.revoke(&g).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Revoke the grants of instances not in `live` (listed after the grants, so that a grant
    /// made meanwhile belongs to an instance the listing holds), except those younger than
    /// `grace` where KMS tells their age. Returns the job ids whose grant went.
    ///
    /// # Errors
    /// When KMS fails.
    pub async fn sweep(
        &self,
        grants: Vec<GrantListEntry>,
        live: &[String],
        now: Timestamp,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, ProvisionError> {
        let mut revoked = Vec::new();
        for g in grants {
            let instance = g
                .grantee_principal()
                .and_then(|p| p.strip_prefix(self.session_prefix.as_str()));
            let young = g.creation_date().is_some_and(|t| {
                now.since(Timestamp::from_unix_millis(t.to_millis().unwrap_or(0))) < grace
            });
            let alive = instance.is_some_and(|i| live.iter().any(|l| l == i));
            if instance.is_none() || alive || young {
                continue;
            }
            self.revoke(&g).await?;
            revoked.push(
                g.name()
                    .and_then(|n| n.strip_prefix(GRANT_NAME_PREFIX))
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_prefix_follows_the_role_and_refuses_other_arns() {
        assert_eq!(
            session_prefix("arn:aws:iam::123456789012:role/seren-worker").expect("role"),
            "arn:aws:sts::123456789012:assumed-role/seren-worker/"
        );
        assert_eq!(
            session_prefix("arn:aws-cn:iam::123456789012:role/team/a/seren-worker").expect("path"),
            "arn:aws-cn:sts::123456789012:assumed-role/seren-worker/"
        );
        for bad in [
            "seren-worker",
            "arn:aws:iam::123456789012:user/alice",
            "arn:aws:iam::12345:role/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:role/",
        ] {
            assert!(session_prefix(bad).is_err(), "{bad}");
        }
    }
}

//! The spot interruption notice: EC2 announces, about two minutes ahead, that it will reclaim a
//! spot instance, by answering `/latest/meta-data/spot/instance-action` in the instance
//! metadata service (404 until then). The worker polls it so that an interrupted job is
//! recorded as `interrupted`, not as a worker that stopped for no reason.

use std::time::Duration;

/// The metadata path of the notice.
pub const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";

/// How often EC2's documentation suggests looking.
pub const POLL_EVERY: Duration = Duration::from_secs(5);

/// Resolves with the notice's text (`{"action": "terminate", "time": "…"}`) once there is one.
/// Until then every answer (404, or the service not answering) means "no notice"; an instance
/// that is not spot never gets one, and the future never resolves.
pub async fn interruption_notice(imds: aws_config::imds::Client, every: Duration) -> String {
    loop {
        match imds.get(INSTANCE_ACTION).await {
            Ok(text) if !text.as_ref().trim().is_empty() => return text.as_ref().to_owned(),
            Ok(_) => {}
            Err(e) => tracing::trace!(error = %e, "no spot interruption notice"),
        }
        tokio::time::sleep(every).await;
    }
}

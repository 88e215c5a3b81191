//! The job state machine.
//!
//! ```text
//! pending → provisioning → running → completed | failed | cancelled | timed_out
//!    ↑  └──────────┴─────────────┴────→ failed | cancelled | timed_out
//!    └─────────────────────────┘ running → pending: its worker was lost, another will resume it
//! ```
//!
//! Terminal statuses never change. Stores make every transition a conditional write on the
//! current status (and version), so two actors racing for one transition cannot both win.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Serialized in `snake_case` (`timed_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Recorded; no worker asked for yet (or, for a job whose worker was lost, no new one yet).
    Pending,
    /// A worker (instance or process) was asked for and has not claimed the job yet.
    Provisioning,
    /// A worker claimed the job and is running it.
    Running,
    /// The worker finished the command successfully.
    Completed,
    /// The command or its worker failed; `error` says why.
    Failed,
    /// Stopped at the owner's request.
    Cancelled,
    /// Ran past its time limit and was stopped.
    TimedOut,
}

impl JobStatus {
    /// Every status, in life order.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Provisioning,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
    ];

    /// The statuses of a job that is not finished.
    pub const ACTIVE: [Self; 3] = [Self::Pending, Self::Provisioning, Self::Running];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }

    /// Whether the job is finished; a terminal status never changes.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }

    /// Whether `self → to` is a transition the state machine allows.
    pub fn can_become(self, to: Self) -> bool {
        use JobStatus::*;
        match (self, to) {
            (Pending, Provisioning)
            | (Provisioning, Running)
            | (Running, Completed)
            | (Running, Pending) => true,
            (from, Failed | Cancelled | TimedOut) => !from.is_terminal(),
            _ => false,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status '{0}'; expected one of pending, provisioning, running, completed, failed, cancelled, timed_out")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses_never_change() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn the_forward_path_and_every_way_out_are_allowed() {
        use JobStatus::*;
        let allowed = [
            (Pending, Provisioning),
            (Provisioning, Running),
            (Running, Completed),
            (Running, Pending),
            (Pending, Failed),
            (Pending, Cancelled),
            (Pending, TimedOut),
            (Provisioning, Failed),
            (Provisioning, Cancelled),
            (Provisioning, TimedOut),
            (Running, Failed),
            (Running, Cancelled),
            (Running, TimedOut),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn spelling_round_trips_and_unknown_names_are_refused() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).expect("serialize"),
                format!("\"{}\"", s.as_str())
            );
        }
        let err = "done".parse::<JobStatus>().expect_err("unknown");
        assert!(err.to_string().contains("'done'"));
    }
}

//! The engine's error: what failed, in the user's terms, and whether trying again can help.

use std::fmt;

/// Which end of the copy an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The database copied from.
    Source,
    /// The database copied into.
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Everything the engine can fail with. Messages are one line and never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A connection URL that cannot be used.
    #[error("invalid {side} URL: {reason}")]
    InvalidUrl {
        /// Which URL.
        side: Side,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or refused us.
    #[error("cannot connect to the {side} database {url}: {reason}")]
    Connect {
        /// Which server.
        side: Side,
        /// The URL without its password.
        url: String,
        /// Why.
        reason: String,
        /// Whether a retry can help (network trouble rather than a wrong password).
        retryable: bool,
    },
    /// A statement failed.
    #[error("{context} on the {side}: {message}")]
    Sql {
        /// Which server.
        side: Side,
        /// What we were doing.
        context: String,
        /// The server's message (and detail), or the driver's.
        message: String,
        /// SQLSTATE when the server sent one.
        code: Option<String>,
    },
    /// A check before the copy found something that would make it fail or be wrong.
    #[error("{0}")]
    Preflight(String),
    /// The session holding the copy's snapshot is gone: the copy cannot go on consistently.
    #[error("{0}")]
    SnapshotLost(String),
    /// The copy is complete but its replication did not start (the slot keeps the changes).
    #[error("{0}")]
    ReplicationNotStarted(String),
    /// A replication slot this run must drop or use stays in use by someone else.
    #[error("{0}")]
    SlotBusy(String),
    /// Another run into the same target holds the run lock.
    #[error("{0}")]
    RunInProgress(String),
    /// The target did not catch up with the source within the time given.
    #[error("{0}")]
    CatchUpTimeout(String),
    /// A defect of this tool (a task that panicked): report it.
    #[error("{0}")]
    Internal(String),
    /// The target already holds objects and replacing them was not asked for.
    #[error("{0}")]
    TargetNotEmpty(String),
    /// `pg_dump`, `pg_restore` or `psql` failed or is missing.
    #[error("{tool}: {message}")]
    Tool {
        /// The program.
        tool: String,
        /// Its last lines of stderr, or why it could not start.
        message: String,
    },
    /// Bad option values.
    #[error("{0}")]
    Usage(String),
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A local I/O failure (temporary files, pipes).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<job_model::FilterError> for Error {
    fn from(e: job_model::FilterError) -> Self {
        Error::Usage(e.0)
    }
}

impl Error {
    /// Whether the same step may succeed when tried again (connection loss, serialization
    /// failures, deadlocks, server shutdown), as opposed to errors a retry only repeats.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { retryable, .. } => *retryable,
            Error::Sql { code: None, .. } => true,
            Error::Sql {
                code: Some(code), ..
            } => {
                use tokio_postgres::error::SqlState;
                // Classes 08 (connection exception) and 53 (insufficient resources), and the
                // states a retry gets past: serialization failure, deadlock, shutdowns.
                let state = SqlState::from_code(code);
                code.starts_with("08")
                    || code.starts_with("53")
                    || [
                        SqlState::T_R_SERIALIZATION_FAILURE,
                        SqlState::T_R_DEADLOCK_DETECTED,
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                    ]
                    .contains(&state)
            }
            _ => false,
        }
    }

    /// A stable, machine-readable name for the kind of failure (a job record's `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "invalid_url",
            Error::Connect {
                side: Side::Source, ..
            } => "source_unreachable",
            Error::Connect {
                side: Side::Target, ..
            } => "target_unreachable",
            Error::Sql {
                side: Side::Source, ..
            } => "source_error",
            Error::Sql {
                side: Side::Target, ..
            } => "target_error",
            Error::Preflight(_) => "preflight_failed",
            Error::SnapshotLost(_) => "snapshot_lost",
            Error::ReplicationNotStarted(_) => "replication_not_started",
            Error::SlotBusy(_) => "slot_busy",
            Error::RunInProgress(_) => "run_in_progress",
            Error::CatchUpTimeout(_) => "catch_up_timeout",
            Error::Internal(_) => "internal_error",
            Error::TargetNotEmpty(_) => "target_not_empty",
            Error::Tool { .. } => "tool_failed",
            Error::Usage(_) => "invalid_options",
            Error::Cancelled => "cancelled",
            Error::Io { .. } => "io_error",
        }
    }

    /// Wrap a driver error from a statement.
    pub fn sql(side: Side, context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        Error::Sql {
            side,
            context: context.into(),
            code: e.code().map(|c| c.code().to_owned()),
            message: pg_message(&e),
        }
    }

    /// Wrap an I/O error.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The most useful one-line text of a driver error: the server's message with its detail and
/// hint, or the driver's own description.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_owned();
        if let Some(d) = db.detail() {
            s.push_str(" (");
            s.push_str(d);
            s.push(')');
        }
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        return s.replace('\n', " ");
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(code: Option<&str>) -> Error {
        Error::Sql {
            side: Side::Target,
            context: "copy".into(),
            message: "m".into(),
            code: code.map(str::to_owned),
        }
    }

    #[test]
    fn each_kind_of_failure_has_its_own_documented_code() {
        let m = || "m".to_owned();
        let all = [
            Error::InvalidUrl {
                side: Side::Source,
                reason: m(),
            },
            Error::Connect {
                side: Side::Source,
                url: m(),
                reason: m(),
                retryable: true,
            },
            Error::Connect {
                side: Side::Target,
                url: m(),
                reason: m(),
                retryable: true,
            },
            Error::Sql {
                side: Side::Source,
                context: m(),
                message: m(),
                code: None,
            },
            sql(None),
            Error::Preflight(m()),
            Error::SnapshotLost(m()),
            Error::ReplicationNotStarted(m()),
            Error::SlotBusy(m()),
            Error::RunInProgress(m()),
            Error::CatchUpTimeout(m()),
            Error::Internal(m()),
            Error::TargetNotEmpty(m()),
            Error::Tool {
                tool: m(),
                message: m(),
            },
            Error::Usage(m()),
            Error::Cancelled,
            Error::io("x", std::io::Error::other("y")),
        ];
        let codes: std::collections::BTreeSet<&str> = all.iter().map(Error::code).collect();
        assert_eq!(codes.len(), all.len(), "two kinds share a code: {codes:?}");
        let guide = include_str!("../../../docs/user-guide.md");
        for code in codes {
            assert!(
                guide.contains(&format!("`{code}`")),
                "docs/user-guide.md does not list the error code {code}"
            );
        }
    }

    #[test]
    fn only_transient_server_states_are_retried() {
        for code in [
            "08006", "53300", "40001", "40P01", "57P01", "57P02", "57P03",
        ] {
            assert!(sql(Some(code)).is_retryable(), "{code}");
        }
        for code in ["23505", "42P01", "42501", "57014", "22P02"] {
            assert!(!sql(Some(code)).is_retryable(), "{code}");
        }
        assert!(
            sql(None).is_retryable(),
            "a lost connection has no SQLSTATE"
        );
        assert!(!Error::SnapshotLost("m".into()).is_retryable());
        assert!(!Error::Internal("m".into()).is_retryable());
    }
}

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
                // Class 08: connection exception; 40001/40P01: serialization/deadlock;
                // 57P01-57P03: admin shutdown, crash shutdown, cannot connect now; 53: resources.
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(
                        code.as_str(),
                        "40001" | "40P01" | "57P01" | "57P02" | "57P03"
                    )
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

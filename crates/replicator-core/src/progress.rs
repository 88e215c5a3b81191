//! Progress as events. The engine calls an [`Observer`] with every [`Event`]; the CLI draws
//! bars from them and the worker writes them to the job record.

use std::sync::Arc;
use std::time::Duration;

/// The steps of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Connectivity, versions, tools, target state.
    Preflight,
    /// Exporting the snapshot and reading the catalog.
    Snapshot,
    /// Tables, types, functions … restored through pg_dump/psql.
    PreData,
    /// Rows, with each table's indexes and constraints built as soon as its rows are in.
    Data,
    /// Foreign keys, triggers, rules, materialized view data and the rest of post-data.
    PostData,
    /// Sequence values and large objects.
    Finish,
    /// `ANALYZE` of the copied tables.
    Analyze,
    /// The subscription that starts replication where the copy ended (with sync).
    Replication,
}

impl Phase {
    /// Every phase, in run order.
    pub const ALL: [Phase; 8] = [
        Phase::Preflight,
        Phase::Snapshot,
        Phase::PreData,
        Phase::Data,
        Phase::PostData,
        Phase::Finish,
        Phase::Analyze,
        Phase::Replication,
    ];

    /// The phase with this [`Phase::name`].
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }

    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Snapshot => "snapshot",
            Phase::PreData => "pre-data",
            Phase::Data => "data",
            Phase::PostData => "post-data",
            Phase::Finish => "sequences+large objects",
            Phase::Analyze => "analyze",
            Phase::Replication => "replication",
        }
    }
}

/// Totals for the data phase, sent once it is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSummary {
    /// Tables whose rows are copied.
    pub tables: usize,
    /// Units of work (a table, or one block range of a split table).
    pub units: usize,
    /// Units already done by an earlier run (resume).
    pub units_done: usize,
    /// Heap + TOAST bytes of the tables to copy: the basis of the ETA.
    pub bytes_estimate: u64,
    /// Estimated rows (statistics), when known.
    pub rows_estimate: u64,
    /// Post-data items (indexes, constraints, triggers …).
    pub post_data_items: usize,
}

/// A snapshot of the data phase's progress.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataProgress {
    /// COPY bytes moved so far.
    pub bytes_copied: u64,
    /// Rows in finished units.
    pub rows_copied: u64,
    /// Progress against `bytes_estimate`: finished units count whole, running units by the
    /// bytes moved (capped at their estimate).
    pub estimate_done: u64,
    /// Heap + TOAST bytes of all units.
    pub estimate_total: u64,
    /// Units finished.
    pub units_done: usize,
    /// Units planned.
    pub units_total: usize,
    /// Indexes and constraints built so far and in all.
    pub post_items_done: usize,
    /// Tables being copied or indexed right now.
    pub active: Vec<String>,
    /// Bytes per second over the run so far.
    pub bytes_per_sec: u64,
    /// Seconds left at that rate, once there is a rate.
    pub eta_secs: Option<u64>,
}

/// Something that happened during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A phase began.
    PhaseStarted(Phase),
    /// A phase ended.
    PhaseFinished(Phase, Duration),
    /// The data phase is planned.
    Planned(PlanSummary),
    /// Periodic data-phase progress (about twice a second).
    Progress(DataProgress),
    /// A table's rows are all in.
    TableCopied {
        /// `schema.table`.
        table: String,
        /// Rows.
        rows: u64,
        /// COPY bytes.
        bytes: u64,
    },
    /// A step failed and is being tried again.
    Retrying {
        /// What.
        what: String,
        /// Which attempt comes next.
        attempt: u32,
        /// Why the last one failed.
        error: String,
    },
    /// Something the user should know that does not stop the run.
    Warning(String),
}

/// Receives events. Called from the engine's tasks: keep it quick.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// An observer that ignores everything.
pub fn silent() -> Observer {
    Arc::new(|_| {})
}

//! One consistent snapshot shared by every connection of a run.
//!
//! A copy alone takes it from `pg_export_snapshot()` in a transaction that stays open for the
//! whole run. When sync follows the copy, the logical replication slot's exported snapshot
//! (`CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`) takes its place: the engine needs only the
//! name and that the session holding it stays alive and idle, which is all [`Snapshot`] offers.

use tokio_postgres::Client;

use crate::connect::connect;
use crate::conninfo::ConnUrl;
use crate::error::{Error, Result, Side};
use crate::replication::HeldSession;
use crate::sql::literal;

/// An exported snapshot and the session keeping it alive. Dropping it ends the snapshot.
#[derive(Debug)]
pub struct Snapshot {
    name: String,
    holder: Holder,
}

#[derive(Debug)]
enum Holder {
    /// A transaction that called `pg_export_snapshot()`.
    Transaction(Client),
    /// The replication session that created a slot exporting it.
    Replication(HeldSession),
}

impl Snapshot {
    /// Export a snapshot from a new session on the source.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Sql`].
    pub async fn export(source: &ConnUrl) -> Result<Self> {
        let holder = connect(source, Side::Source).await?;
        // A server-side idle timeout would end the snapshot mid-copy.
        holder
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| Error::sql(Side::Source, "open the snapshot transaction", e))?;
        let name: String = holder
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| Error::sql(Side::Source, "export a snapshot", e))?
            .get(0);
        Ok(Self {
            name,
            holder: Holder::Transaction(holder),
        })
    }

    /// The snapshot a replication slot exported, kept alive by its idle session.
    pub fn held(name: String, session: HeldSession) -> Self {
        Self {
            name,
            holder: Holder::Replication(session),
        }
    }

    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT` and `pg_dump --snapshot`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the holding session is still up (the snapshot is usable only while it is).
    pub fn is_alive(&self) -> bool {
        match &self.holder {
            Holder::Transaction(c) => !c.is_closed(),
            Holder::Replication(s) => s.is_alive(),
        }
    }
}

/// Start a read-only transaction on `client` (a session from [`connect`], so its timeouts are
/// off and row security raises rather than filters) that sees exactly `snapshot`.
///
/// # Errors
/// [`Error::Sql`], e.g. "invalid snapshot identifier" when the holder has gone.
pub async fn import(client: &Client, snapshot: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            literal(snapshot)
        ))
        .await
        .map_err(|e| Error::sql(Side::Source, "import the snapshot", e))
}

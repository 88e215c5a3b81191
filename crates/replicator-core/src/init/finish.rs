//! After post-data: sequence values and large objects, read under the snapshot. Retried as a
//! whole on a transient error (new sessions, the snapshot imported again): setting a sequence
//! twice is harmless, and each large object claims its record before it is written (or, on a
//! resume that brings the copy to its new snapshot, is replaced whole).

use std::collections::HashSet;

use tokio_postgres::Client;

use super::pool::with_retries;
use super::{lock, Ctx};
use crate::catalog::Catalog;
use crate::connect::connect;
use crate::error::{Error, Result, Side};
use crate::filter::QualName;
use crate::snapshot::{self, Snapshot};
use crate::target::{self, Claim};

/// Set each of `sequences` on the target to its value on the source (read in whatever
/// snapshot `source` is in); returns how many the target has.
///
/// # Errors
/// [`Error::Sql`].
pub(crate) async fn copy_sequences(
    source: &Client,
    target: &Client,
    sequences: impl Iterator<Item = &QualName>,
) -> Result<usize> {
    let mut n = 0;
    for seq in sequences {
        let row = source
            .query_one(
                &format!("SELECT last_value, is_called FROM {}", seq.quoted()),
                &[],
            )
            .await
            .map_err(|e| Error::sql(Side::Source, format!("read sequence {seq}"), e))?;
        let (value, called): (i64, bool) = (row.get(0), row.get(1));
        let set = target
            .query_opt(
                "SELECT pg_catalog.setval(to_regclass($1), $2, $3) WHERE to_regclass($1) IS NOT NULL",
                &[&seq.quoted(), &value, &called],
            )
            .await
            .map_err(|e| Error::sql(Side::Target, format!("set sequence {seq}"), e))?;
        n += usize::from(set.is_some());
    }
    Ok(n)
}

/// Copy one large object in its own transaction, unless an earlier attempt did; with `again`
/// whatever the record says, its content replaced whole (a resume brings the large objects the
/// interrupted run copied under its snapshot up to the new one, as it does their tables).
async fn copy_large_object(source: &Client, target: &Client, oid: u32, again: bool) -> Result<()> {
    const CHUNK: i32 = 1 << 20;
    let (s, t) = (Side::Source, Side::Target);
    target
        .batch_execute("BEGIN")
        .await
        .map_err(|e| Error::sql(t, "copy large objects", e))?;
    let copy_one = async {
        if target::claim_step(target, &format!("lo:{oid}")).await? == Claim::AlreadyDone && !again {
            return Ok(false);
        }
        target
            .execute(
                "SELECT lo_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = $1)",
                &[&oid],
            )
            .await
            .map_err(|e| Error::sql(t, format!("create large object {oid}"), e))?;
        if again {
            // Emptied, not unlinked: its owner and grants (pre-data's) stay. 131072: INV_WRITE.
            target
                .execute("SELECT lo_truncate64(lo_open($1, 131072), 0)", &[&oid])
                .await
                .map_err(|e| Error::sql(t, format!("empty large object {oid}"), e))?;
        }
        let mut offset: i64 = 0;
        loop {
            let data: Vec<u8> = source
                .query_one("SELECT lo_get($1, $2, $3)", &[&oid, &offset, &CHUNK])
                .await
                .map_err(|e| Error::sql(s, format!("read large object {oid}"), e))?
                .get(0);
            if !data.is_empty() {
                target
                    .execute("SELECT lo_put($1, $2, $3)", &[&oid, &offset, &data])
                    .await
                    .map_err(|e| Error::sql(t, format!("write large object {oid}"), e))?;
            }
            offset += data.len() as i64;
            if data.len() < CHUNK as usize {
                break;
            }
        }
        target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| Error::sql(t, format!("commit large object {oid}"), e))?;
        Ok(true)
    };
    match copy_one.await {
        Ok(true) => Ok(()),
        Ok(false) => target
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| Error::sql(t, "copy large objects", e)),
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Sequences and large objects as of `snapshot`. With `again` (a resume that brings what the
/// interrupted run copied up to its new snapshot) every large object is copied again, and one
/// the target holds but the source no longer does is removed.
/// Unlink the target's large objects that are not among `wanted` (the source's as of the
/// snapshot): the interrupted run copied them, and the source has since removed them. The
/// target database is the copy's own (an `init` refuses a target holding data), so every large
/// object in it came from the source.
async fn remove_vanished_large_objects(target: &Client, wanted: &[u32]) -> Result<()> {
    target
        .execute(
            "SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid <> ALL ($1::oid[])",
            &[&wanted],
        )
        .await
        .map_err(|e| {
            Error::sql(
                Side::Target,
                "remove large objects the source no longer has",
                e,
            )
        })?;
    Ok(())
}

pub(crate) async fn finish(
    ctx: &Ctx,
    snapshot: &Snapshot,
    catalog: &Catalog,
    done: &HashSet<String>,
    again: bool,
) -> Result<()> {
    let o = &ctx.opts;
    let (sequences, large_objects) = with_retries(ctx, "sequences and large objects", || async {
        if !snapshot.is_alive() {
            return Err(Error::SnapshotLost(
                "the session holding the snapshot was lost before the sequences and large \
                 objects were copied; run again with --resume to finish"
                    .into(),
            ));
        }
        let (source, target) = tokio::try_join!(
            connect(&o.source, Side::Source),
            connect(&o.target, Side::Target)
        )?;
        snapshot::import(&source, snapshot.name()).await?;
        let sequences = copy_sequences(
            &source,
            &target,
            catalog.sequences.iter().filter(|q| o.filter.selects(q)),
        )
        .await?;
        let mut large_objects = 0;
        if again {
            remove_vanished_large_objects(&target, &catalog.large_objects).await?;
        }
        for &oid in &catalog.large_objects {
            if again || !done.contains(&format!("lo:{oid}")) {
                copy_large_object(&source, &target, oid, again).await?;
            }
            large_objects += 1;
        }
        Ok((sequences, large_objects))
    })
    .await?;
    let mut r = lock(&ctx.report);
    r.sequences = sequences;
    r.large_objects = large_objects;
    Ok(())
}

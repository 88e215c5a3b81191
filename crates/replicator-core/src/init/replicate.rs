//! Replication around the copy: the replaced target's subscription retired first, the
//! subscription created when the copy completes (from the slot whose snapshot the copy used),
//! a complete copy's replication started on `--resume`, and the bookkeeping removed.

use super::pool::with_retries;
use super::preflight::Preflight;
use super::{lock, Ctx};
use crate::connect::connect;
use crate::error::{Error, Result, Side};
use crate::progress::Phase;
use crate::sync::{self, SyncMode, SyncNames, SyncReport};
use crate::target::{self, TargetState};

/// A target about to be replaced may still be subscribed to the source (an earlier sync). Its
/// subscription goes first: left running, it would reattach to the slot this run creates under
/// the same name and consume changes meant for the new copy. Without sync in this run, the old
/// slot and publication go too, or the source would keep WAL for them.
pub(super) async fn retire_old_replication(
    ctx: &Ctx,
    pre: &Preflight,
    names: &SyncNames,
) -> Result<()> {
    let o = &ctx.opts;
    if pre.create_with.is_none() || pre.state == TargetState::Missing {
        return Ok(());
    }
    let mut subscribed = false;
    if let Ok(old) = connect(&o.target, Side::Target).await {
        if sync::drop_subscription(&old, names).await? {
            tracing::info!(subscription = %names.subscription, "dropped the replaced target's subscription");
            subscribed = true;
        }
    }
    // The replaced copy's slot and publication were its own (its subscription used them); a
    // new slot of the same name is made below when sync follows.
    if subscribed || !pre.sync {
        let source = connect(&o.source, Side::Source).await?;
        sync::drop_source_objects(&source, names).await?;
    }
    Ok(())
}

/// The copy is complete: subscribe the target to the slot, so that replication starts exactly
/// where the copy's snapshot ended, and remove the bookkeeping in the same transaction. When
/// the target cannot subscribe, the slot, the publication and the bookkeeping (which records
/// the copy as complete) are kept, so that `sync` can start it later from the same point.
pub(super) async fn start_replication(
    ctx: &Ctx,
    names: &SyncNames,
    consistent_point: String,
    published: usize,
) -> Result<SyncReport> {
    let o = &ctx.opts;
    let via = o.sync_source.as_ref().unwrap_or(&o.source);
    if let Some(w) = sync::password_warning(via) {
        ctx.warn(w);
    }
    let target = connect(&o.target, Side::Target).await?;
    if let Err(e) = sync::create_subscription(&target, names, via).await {
        return Err(Error::ReplicationNotStarted(format!(
            "the copy is complete, but replication did not start: {e}. The slot {} keeps the \
             source's changes since the copy; fix the cause and run `postgres-seren-replicator \
             sync` to start from there, or `sync --stop` to drop the slot",
            names.slot
        )));
    }
    Ok(SyncReport {
        names: names.clone(),
        consistent_point,
        published_tables: published,
    })
}

/// `--resume` of a copy that had completed: start its replication from the slot it made, or,
/// when replication does not follow, drop the slot and the bookkeeping.
pub(super) async fn finish_complete_copy(
    ctx: &Ctx,
    pre: &Preflight,
    names: &SyncNames,
) -> Result<()> {
    let o = &ctx.opts;
    let source = connect(&o.source, Side::Source).await?;
    let (slot, publication) = sync::source_objects(&source, names).await?;
    let lost = slot && sync::slot_lost(&source, names).await?;
    if lost {
        ctx.warn(format!(
            "the copy is complete, but its replication slot {} was invalidated (the source \
             removed WAL it needed, see max_slot_wal_keep_size), so replication cannot start \
             without a gap: `postgres-seren-replicator sync --force` copies again and replicates",
            names.slot
        ));
    }
    if pre.sync && slot && publication && !lost {
        let (point, published) = sync::slot_origin(&source, names).await?;
        let report = ctx
            .phase(
                Phase::Replication,
                start_replication(ctx, names, point, published),
            )
            .await?;
        lock(&ctx.report).sync = Some(report);
        return Ok(());
    }
    if o.sync != SyncMode::Off && !slot && !lost {
        ctx.warn(format!(
            "the copy is complete, but its replication slot {} is gone, so replication cannot \
             start without a gap: `postgres-seren-replicator sync --force` copies again and \
             replicates",
            names.slot
        ));
    }
    let dropped = sync::drop_source_objects(&source, names).await?;
    if !dropped.is_empty() {
        ctx.warn(format!(
            "dropped the {} of the complete copy: replication does not follow it",
            dropped.join(" and ")
        ));
    }
    drop_bookkeeping(ctx).await
}

/// Remove the bookkeeping once the copy is complete (retried: dropping it twice is harmless).
pub(super) async fn drop_bookkeeping(ctx: &Ctx) -> Result<()> {
    let o = &ctx.opts;
    with_retries(ctx, "remove the bookkeeping", || async {
        let t = connect(&o.target, Side::Target).await?;
        target::drop_bookkeeping(&t).await
    })
    .await
}

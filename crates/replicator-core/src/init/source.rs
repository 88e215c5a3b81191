//! What the run takes from the source before the copy: the snapshot (with sync, the
//! publication and the slot whose exported snapshot it is), the catalog read under it, and what
//! the filters select.

use std::collections::HashSet;

use super::preflight::tables_to_copy;
use super::{pre_target_system, Ctx};
use crate::catalog::{self, Catalog};
use crate::checks;
use crate::connect::connect;
use crate::error::{Error, Result, Side};
use crate::filter::QualName;
use crate::snapshot::{self, Snapshot};
use crate::sync::{self, SyncNames};
use crate::target;

pub(super) struct Snap {
    pub(super) snapshot: Snapshot,
    pub(super) catalog: Catalog,
    pub(super) copy: Vec<bool>,
    pub(super) excluded: Vec<QualName>,
    /// With sync: the slot whose snapshot this is, and how many tables it publishes.
    pub(super) slot: Option<(crate::replication::CreatedSlot, usize)>,
}

/// What the publication carries and what it leaves out.
struct Published {
    tables: Vec<QualName>,
    left_out: HashSet<QualName>,
}

/// With sync: publish the tables the copy will fill that replication can keep exact, then
/// create the slot whose exported snapshot the copy uses. The publication comes first because
/// pgoutput decides what a change belongs to by the catalog as of that change. Tables that are
/// not permanent, or whose UPDATE and DELETE replication cannot carry, are copied and left out,
/// with a warning: publishing a table without a replica identity would make the application's
/// UPDATE and DELETE on it fail.
async fn snapshot_with_slot(
    ctx: &Ctx,
    names: &SyncNames,
    recorded: Option<&HashSet<QualName>>,
) -> Result<(Snapshot, crate::replication::CreatedSlot, Published)> {
    let o = &ctx.opts;
    let plain = connect(&o.source, Side::Source).await?;
    let now = catalog::read(&plain).await?;
    // A resumed run copies what the interrupted one planned: a table created since is not in
    // the target, so replication must not carry it either ([`super::run`] says so).
    let (wanted, unplanned): (Vec<QualName>, Vec<QualName>) = tables_to_copy(&now, &o.filter)
        .into_iter()
        .partition(|t| recorded.is_none_or(|r| r.contains(t)));
    let (persistent, unlogged) = sync::replicable(&plain, &wanted).await?;
    if !unlogged.is_empty() {
        let list: Vec<String> = unlogged.iter().map(ToString::to_string).collect();
        ctx.warn(format!(
            "copied but not replicated (logical replication carries permanent tables only): {}",
            list.join(", ")
        ));
    }
    let gaps = checks::identity_problems(&plain, Some(&persistent)).await?;
    if !gaps.is_empty() {
        let list: Vec<String> = gaps.iter().map(ToString::to_string).collect();
        ctx.warn(format!(
            "copied but not replicated: {}; publishing them would make UPDATE and DELETE on them \
             fail on the source or stop the subscription, so changes to them after the copy do \
             not reach the target: {}",
            checks::name_list(&list, 10),
            checks::IDENTITY_FIX
        ));
    }
    let gap_tables: HashSet<&QualName> = gaps.iter().map(|g| &g.table).collect();
    let candidates: Vec<QualName> = persistent
        .iter()
        .filter(|t| !gap_tables.contains(t))
        .cloned()
        .collect();
    let not_owned = sync::not_publishable(&plain, &candidates).await?;
    if !not_owned.is_empty() {
        let list: Vec<String> = not_owned.iter().map(ToString::to_string).collect();
        ctx.warn(format!(
            "copied but not replicated: {}, which the source role may read but not publish, so \
             changes to them after the copy do not reach the target ({})",
            checks::name_list(&list, 10),
            sync::PUBLISH_FIX
        ));
    }
    let tables: Vec<QualName> = candidates
        .into_iter()
        .filter(|t| !not_owned.contains(t))
        .collect();
    let left_out: HashSet<QualName> = unlogged
        .into_iter()
        .chain(gaps.into_iter().map(|g| g.table))
        .chain(not_owned)
        .chain(unplanned)
        .collect();
    warn_money_locale(ctx, &plain, &tables).await?;
    // Anything of this name still there belongs to a replication this run may not end.
    sync::refuse_existing(&plain, names).await?;
    ctx.made(|m| m.replication = true);
    let comment = sync::publication_comment(&o.target, pre_target_system(ctx).as_deref());
    sync::create_publication(&plain, names, &tables, &comment).await?;
    let (snapshot, created) = sync::create_slot(&o.source, &plain, names).await?;
    Ok((snapshot, created, Published { tables, left_out }))
}

/// Replication carries values as text rendered by the source's WAL sender, which does not pin
/// `lc_monetary` as this tool's sessions do: a `money` column is read back right only when the
/// target reads it in the same locale. Warn when the two defaults differ.
async fn warn_money_locale(
    ctx: &Ctx,
    source: &tokio_postgres::Client,
    tables: &[QualName],
) -> Result<()> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let with_money: Vec<String> = source
        .query(
            "SELECT DISTINCT format('%I.%I', n.nspname, c.relname) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.atttypid = 'money'::regtype AND a.attnum > 0 AND NOT a.attisdropped \
               AND (n.nspname::text, c.relname::text) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
             ORDER BY 1",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "look for money columns", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if with_money.is_empty() {
        return Ok(());
    }
    let default = "SELECT reset_val FROM pg_settings WHERE name = 'lc_monetary'";
    let theirs: String = source
        .query_one(default, &[])
        .await
        .map_err(|e| Error::sql(Side::Source, "read lc_monetary", e))?
        .get(0);
    let maintenance = target::connect_maintenance(&ctx.opts.target).await?;
    let ours: String = maintenance
        .query_one(default, &[])
        .await
        .map_err(|e| Error::sql(Side::Target, "read lc_monetary", e))?
        .get(0);
    if theirs != ours {
        ctx.warn(format!(
            "{} have money columns, and the source renders money in lc_monetary {theirs} while \
             the target reads it in {ours}: replicated changes to them would arrive wrong or stop \
             the subscription; set lc_monetary = '{theirs}' on the target database (ALTER DATABASE \
             … SET lc_monetary) before writes start, or use numeric",
            checks::name_list(&with_money, 5)
        ));
    }
    Ok(())
}

/// `recorded`: a resumed run's planned tables ([`super::preflight::Preflight::recorded_tables`]).
pub(super) async fn take_snapshot(
    ctx: &Ctx,
    sync_names: Option<&SyncNames>,
    recorded: Option<&HashSet<QualName>>,
) -> Result<Snap> {
    let (snapshot, slot) = match sync_names {
        Some(names) => {
            let (snapshot, created, published) = snapshot_with_slot(ctx, names, recorded).await?;
            (snapshot, Some((created, published)))
        }
        None => (Snapshot::export(&ctx.opts.source).await?, None),
    };
    let client = connect(&ctx.opts.source, Side::Source).await?;
    snapshot::import(&client, snapshot.name()).await?;
    let catalog = catalog::read(&client).await?;
    let filter = &ctx.opts.filter;
    for name in filter.row_filters.keys() {
        if !catalog.tables.iter().any(|t| &t.name == name) {
            return Err(Error::Usage(format!(
                "--table-filter names {name}, which is not a table in the source"
            )));
        }
    }
    let excluded: Vec<QualName> = catalog
        .relations
        .iter()
        .filter(|r| !filter.selects(r))
        .cloned()
        .collect();
    if !filter.include.is_empty()
        && excluded.len() == catalog.relations.len()
        && !catalog.relations.is_empty()
    {
        return Err(Error::Usage(
            "--include-tables matches no table in the source".into(),
        ));
    }
    let copy = catalog
        .tables
        .iter()
        .map(|t| filter.selects(&t.name) && !filter.is_schema_only(&t.name))
        .collect();
    let slot = match slot {
        Some((created, published)) => {
            // A table created between the publication and the slot would be copied and then
            // never replicated: refuse rather than drift.
            let published_set: HashSet<&QualName> = published.tables.iter().collect();
            let (persistent, _) =
                sync::replicable(&client, &tables_to_copy(&catalog, filter)).await?;
            let missing: Vec<String> = persistent
                .iter()
                .filter(|t| recorded.is_none_or(|r| r.contains(t)))
                .filter(|t| !published_set.contains(t) && !published.left_out.contains(t))
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                return Err(Error::Preflight(format!(
                    "table(s) {} appeared on the source while replication was being set up; run \
                     again",
                    missing.join(", ")
                )));
            }
            Some((created, published.tables.len()))
        }
        None => None,
    };
    Ok(Snap {
        snapshot,
        catalog,
        copy,
        excluded,
        slot,
    })
}

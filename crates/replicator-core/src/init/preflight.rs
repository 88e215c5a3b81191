//! Everything `init` checks before it changes anything, on the same [`crate::checks`] that
//! `validate` reports, plus what only a run decides: the target's state against `--resume` and
//! `--drop-existing`, the source a resumed copy came from, whether replication follows.

use tokio_postgres::Client;

use super::Ctx;
use crate::catalog;
use crate::checks::{self, Check};
use crate::connect::connect;
use crate::error::{Error, Result, Side};
use crate::filter::QualName;
use crate::schema;
use crate::sync::{self, RunLock, SyncMode, SyncNames};
use crate::target::{self, SourceIdentity, TargetState};

pub(crate) struct Preflight {
    pub tools: schema::Tools,
    pub source_major: u32,
    pub target_major: u32,
    /// This run finishes an interrupted one.
    pub resumed: bool,
    /// The interrupted run had copied everything: only its replication is left to start.
    pub complete: bool,
    pub state: TargetState,
    /// The session on the target's maintenance database, for DROP/CREATE DATABASE.
    pub maintenance: Client,
    /// The locale to create the target database with, when it is to be (re)created.
    pub create_with: Option<target::DatabaseLocale>,
    /// Whether replication follows the copy.
    pub sync: bool,
    /// Held for the whole run: marks it in progress for sweeps and other runs.
    pub lock: Option<RunLock>,
    /// The source, as the bookkeeping records it.
    pub source_identity: SourceIdentity,
    /// A resumed run brings the tables the interrupted one finished up to its new snapshot
    /// (`Some`; `true`: with `session_replication_role = replica`, see [`resume_refresh`]);
    /// `None` when it does not.
    pub refresh: Option<bool>,
    /// A resumed run: the tables the interrupted one planned (replication publishes no other).
    pub recorded_tables: Option<std::collections::HashSet<QualName>>,
    /// What the pre-data restore leaves out for the schema `public`.
    pub public: checks::PublicSchema,
}

/// Refuse on a failed check; say a warning's finding and fix.
fn refuse_or_warn(ctx: &Ctx, check: Check) -> Result<()> {
    if check.verdict == checks::Verdict::Warn {
        if check.fix.is_empty() {
            ctx.warn(check.detail.clone());
        } else {
            ctx.warn(format!("{}; {}", check.detail, check.fix));
        }
    }
    refuse(check)
}

fn refuse(check: Check) -> Result<()> {
    match checks::refusal(std::slice::from_ref(&check)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The tables a run copies rows of.
pub(crate) fn tables_to_copy(catalog: &catalog::Catalog, filter: &crate::Filter) -> Vec<QualName> {
    catalog
        .tables
        .iter()
        .filter(|t| filter.selects(&t.name) && !filter.is_schema_only(&t.name))
        .map(|t| t.name.clone())
        .collect()
}

pub(crate) async fn preflight(ctx: &Ctx, names: &SyncNames) -> Result<Preflight> {
    let o = &ctx.opts;
    let (source, maintenance) = tokio::try_join!(
        connect(&o.source, Side::Source),
        target::connect_maintenance(&o.target)
    )?;
    let source_major = catalog::major_version(&source, Side::Source).await?;
    let target_major = catalog::major_version(&maintenance, Side::Target).await?;
    refuse_or_warn(ctx, checks::source_version(source_major))?;
    refuse(checks::target_version(source_major, target_major))?;
    refuse(checks::distinct(&source, &maintenance, &o.source, &o.target).await)?;
    let tools = schema::find_tools(o.pg_bindir.as_deref(), source_major, target_major).await?;
    *super::lock(&ctx.target_system) = target::server_identifier(&maintenance).await;

    // From here on this run owns the target's name on the source: another run into the same
    // target is refused, and no sweep takes this run's slot for a leftover.
    let lock = sync::lock_run(&o.source, names, &o.target, o.take_over_lost_run.as_deref()).await?;
    let sweep = sync::sweep(&source, &o.target, names, true).await?;
    for d in sweep.dropped {
        ctx.warn(format!("dropped the {d}"));
    }
    for n in sweep.notes {
        ctx.warn(n);
    }

    // A process killed with kill -9 can leave a psql child still restoring into the target, or
    // backends still committing: end them before reading what the target holds.
    let ended =
        target::end_leftover_sessions(&maintenance, &o.target, o.take_over_lost_run.as_deref())
            .await?;
    if ended > 0 {
        ctx.warn(format!(
            "ended {ended} session(s) an interrupted run had left on the target database {}",
            o.target.dbname
        ));
    }
    let state = target::state(&maintenance, &o.target).await?;
    let (mut resumed, mut complete) = (false, false);
    match (&state, o.drop_existing, o.resume) {
        (_, true, true) => {
            return Err(Error::Usage(
                "--resume and --drop-existing contradict each other: pick one".into(),
            ))
        }
        (TargetState::Interrupted, false, true) => resumed = true,
        (TargetState::AwaitingReplication, false, true) => (resumed, complete) = (true, true),
        (_, false, true) => {
            return Err(Error::Usage(format!(
                "--resume: the target database {} holds no interrupted run to finish",
                o.target.dbname
            )))
        }
        (TargetState::NonEmpty(n), false, false) => {
            return Err(Error::TargetNotEmpty(format!(
                "the target database {} is not empty ({n} objects): pass --drop-existing to \
                 replace it (everything in it is lost), or name an empty or new database",
                o.target.dbname
            )))
        }
        (TargetState::Interrupted, false, false) => {
            return Err(Error::TargetNotEmpty(format!(
                "the target database {} holds an interrupted copy: pass --resume to finish it \
                 or --drop-existing to start over",
                o.target.dbname
            )))
        }
        (TargetState::AwaitingReplication, false, false) => {
            return Err(Error::TargetNotEmpty(format!(
                "the target database {} holds a complete copy whose replication has not started: \
                 run `postgres-seren-replicator sync` (or init --resume) to start it from where \
                 the copy ended, or pass --drop-existing to start over",
                o.target.dbname
            )))
        }
        _ => {}
    }

    let source_identity = SourceIdentity::read(&source, &o.source).await?;
    if resumed {
        check_same_source(ctx, &source_identity).await?;
    }
    if !complete {
        refuse_or_warn(
            ctx,
            checks::extensions(&source, &maintenance, target_major).await,
        )?;
        refuse_or_warn(
            ctx,
            checks::roles(&source, &maintenance, o.no_owner, o.no_privileges).await,
        )?;
        refuse(checks::tablespaces(&source, &maintenance).await)?;
        refuse_or_warn(ctx, checks::collation_library(&source, &maintenance).await)?;
    }

    let create_with = if o.drop_existing || state == TargetState::Missing {
        Some(target::source_locale(&source).await?)
    } else {
        None
    };
    let mut public = checks::PublicSchema::default();
    if !complete {
        // A database this run creates comes from template0; one it keeps is read.
        let existing = match create_with {
            Some(_) => None,
            None => Some(connect(&o.target, Side::Target).await?),
        };
        let (check, plan) = checks::public_schema(
            &source,
            &maintenance,
            existing.as_ref(),
            target_major,
            o.no_owner,
            o.no_privileges,
        )
        .await;
        refuse_or_warn(ctx, check)?;
        public = plan;
    }
    let (refresh, recorded_tables) = if resumed && !complete {
        let (how, recorded) = resume_refresh(&o.target).await?;
        (Some(how), Some(recorded))
    } else {
        (None, None)
    };
    let blocked = refresh.as_ref().and_then(|r| r.as_ref().err().cloned());
    let sync = decide_sync(
        ctx,
        &source,
        &maintenance,
        names,
        complete,
        blocked.as_deref(),
    )
    .await?;
    let refresh = refresh.and_then(std::result::Result::ok);
    Ok(Preflight {
        tools,
        source_major,
        target_major,
        resumed,
        complete,
        state,
        maintenance,
        create_with,
        sync,
        lock: Some(lock),
        source_identity,
        refresh,
        recorded_tables,
        public,
    })
}

/// Whether a resumed run can bring the tables the interrupted one finished up to its new
/// snapshot: it deletes and inserts rows in them, which must not set off what a later phase of
/// the interrupted run may already have made on them (foreign keys, triggers, rules) nor be
/// filtered by row-level security. A superuser's sessions set `session_replication_role =
/// replica`, under which none of these act (but triggers and rules enabled `ALWAYS`); another
/// role can only do it on tables without them. Returns `Ok(replica_role)` or why not, and the
/// tables the interrupted run planned.
async fn resume_refresh(
    target_url: &crate::conninfo::ConnUrl,
) -> Result<(
    std::result::Result<bool, String>,
    std::collections::HashSet<QualName>,
)> {
    let t = connect(target_url, Side::Target).await?;
    let (records, _) = target::load_bookkeeping(&t).await?;
    let recorded = records
        .iter()
        .map(|r| QualName::new(r.schema.clone(), r.table.clone()))
        .collect();
    let (schemas, tables): (Vec<&str>, Vec<&str>) = records
        .iter()
        .filter(|r| r.done)
        .map(|r| (r.schema.as_str(), r.table.as_str()))
        .unzip();
    let superuser: bool = t
        .query_one(catalog::IS_SUPERUSER, &[])
        .await
        .map_err(|e| Error::sql(Side::Target, "read the role's attributes", e))?
        .get(0);
    let rows = t
        .query(
            // What fires in the sessions that put rows back: with `$3` (superuser) they run
            // with session_replication_role = replica, where triggers and rules enabled
            // ALWAYS or REPLICA fire and foreign keys do not act; otherwise those enabled as
            // usual (ORIGIN) or ALWAYS fire, and foreign keys act.
            "SELECT format('%I.%I', n.nspname, c.relname), array_remove(ARRAY[ \
                CASE WHEN EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid \
                                  AND NOT g.tgisinternal \
                                  AND g.tgenabled = ANY (CASE WHEN $3 THEN '{A,R}'::\"char\"[] \
                                                              ELSE '{A,O}'::\"char\"[] END)) \
                     THEN 'triggers' END, \
                CASE WHEN NOT $3 AND EXISTS (SELECT 1 FROM pg_constraint k WHERE k.contype = 'f' \
                                             AND (k.conrelid = c.oid OR k.confrelid = c.oid)) \
                     THEN 'foreign keys' END, \
                CASE WHEN EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = c.oid \
                                  AND w.rulename <> '_RETURN' \
                                  AND w.ev_enabled = ANY (CASE WHEN $3 THEN '{A,R}'::\"char\"[] \
                                                               ELSE '{A,O}'::\"char\"[] END)) \
                     THEN 'rules' END, \
                CASE WHEN NOT $3 AND c.relrowsecurity THEN 'row-level security' END], NULL)::text[], \
                EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid) \
                  OR EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = c.oid \
                             AND w.rulename <> '_RETURN') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE (n.nspname::text, c.relname::text) IN \
                   (SELECT * FROM unnest($1::text[], $2::text[])) \
             ORDER BY 1",
            &[&schemas, &tables, &superuser],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "look for triggers and foreign keys", e))?;
    let mut blocked = Vec::new();
    let mut acting = false;
    for r in &rows {
        let what: Vec<String> = r.get(1);
        acting |= r.get::<_, bool>(2);
        if !what.is_empty() {
            blocked.push(format!("{} ({})", r.get::<_, String>(0), what.join(", ")));
        }
    }
    if blocked.is_empty() {
        return Ok((Ok(superuser && acting), recorded));
    }
    Ok((
        Err(format!(
            "--resume would bring the tables the interrupted run finished up to a new snapshot, \
             but on the target {} already act on rows put back; resume as a superuser of the \
             target (whose sessions keep them from acting), or start over with --drop-existing",
            checks::name_list(&blocked, 5)
        )),
        recorded,
    ))
}

/// A resumed copy must come from the source the interrupted one came from, with the same
/// filters.
async fn check_same_source(ctx: &Ctx, now: &SourceIdentity) -> Result<()> {
    let o = &ctx.opts;
    let target = connect(&o.target, Side::Target).await?;
    match target::recorded_source(&target).await? {
        Some((was, fingerprint)) => {
            if let Some(why) = was.mismatch(now) {
                return Err(Error::Preflight(format!(
                    "--resume: {why}; resume from the same source, or start over with \
                     --drop-existing"
                )));
            }
            let filters = o.filter.describe();
            if fingerprint != filters {
                return Err(Error::Usage(format!(
                    "--resume: the interrupted copy was made with {fingerprint}, this run asks \
                     for {filters}: resume with the same table flags, or start over with \
                     --drop-existing"
                )));
            }
        }
        None => ctx.warn(
            "the interrupted copy does not record which source it came from (it was made by an \
             older version): make sure --source names the same database"
                .into(),
        ),
    }
    Ok(())
}

/// Whether replication follows the copy: the replication checks (the same `validate` makes),
/// the options, and with `--sync` the tables' replica identity. A failure refuses with
/// `--sync` and is one warning otherwise.
async fn decide_sync(
    ctx: &Ctx,
    source: &Client,
    maintenance: &Client,
    names: &SyncNames,
    complete: bool,
    refresh_blocked: Option<&str>,
) -> Result<bool> {
    let o = &ctx.opts;
    let mode = o.sync;
    if mode == SyncMode::Off {
        return Ok(false);
    }
    let via_password = o
        .sync_source
        .as_ref()
        .unwrap_or(&o.source)
        .password
        .is_some();
    let mut problems: Vec<String> =
        checks::replication(source, Some((maintenance, via_password)), Some(&names.slot))
            .await
            .iter()
            .filter(|c| c.failed())
            .map(Check::problem)
            .collect();
    if let Some(why) = refresh_blocked {
        problems.push(format!(
            "{why}; without that, the copy would mix two moments of the source and replication \
             could not start where it ends"
        ));
    }
    if !o.filter.row_filters.is_empty() {
        problems.push(
            "--table-filter copies part of a table while replication would carry all of its \
             changes"
                .into(),
        );
    }
    if problems.is_empty() && !complete {
        let now = catalog::read(source).await?;
        let (persistent, _) = sync::replicable(source, &tables_to_copy(&now, &o.filter)).await?;
        let not_owned = sync::not_publishable(source, &persistent).await?;
        if mode == SyncMode::Required {
            // Tables it would have to leave out: with --sync that is a refusal, before
            // anything is created.
            let gaps = checks::identity_problems(source, Some(&persistent)).await?;
            if !gaps.is_empty() {
                let list: Vec<String> = gaps.iter().map(ToString::to_string).collect();
                problems.push(format!(
                    "replication cannot keep {} table(s) in step: {} ({}), or copy without \
                     --sync, which copies them and leaves them out of replication",
                    gaps.len(),
                    checks::name_list(&list, 10),
                    checks::IDENTITY_FIX
                ));
            }
            if !not_owned.is_empty() {
                let list: Vec<String> = not_owned.iter().map(ToString::to_string).collect();
                problems.push(format!(
                    "the source role may not publish {} table(s): {} ({}), or copy without \
                     --sync, which copies them and leaves them out of replication",
                    not_owned.len(),
                    checks::name_list(&list, 10),
                    sync::PUBLISH_FIX
                ));
            }
        } else if !persistent.is_empty() && not_owned.len() == persistent.len() {
            // Replication of nothing would still hold a slot on the source.
            problems.push(format!(
                "the source role may publish none of the tables ({})",
                sync::PUBLISH_FIX
            ));
        }
    }
    match (problems.is_empty(), mode) {
        (true, _) => Ok(true),
        // A complete copy's slot is worth keeping: only an explicit --no-sync gives it up.
        (false, SyncMode::Auto) if complete => Err(Error::ReplicationNotStarted(format!(
            "the copy is complete, but its replication cannot start now: {}; fix that and run \
             --resume again (the slot keeps the source's changes meanwhile), or pass --no-sync \
             to finish the copy without replication, which drops the slot",
            problems.join("; ")
        ))),
        (false, SyncMode::Required) => Err(Error::Preflight(format!(
            "--sync: replication cannot follow this copy: {}",
            problems.join("; ")
        ))),
        (false, _) => {
            ctx.warn(format!(
                "copying only, without replication afterwards: {} (--no-sync skips this check)",
                problems.join("; ")
            ));
            Ok(false)
        }
    }
}

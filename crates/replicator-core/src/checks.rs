//! The checks a copy (and the replication after it) depends on, each defined once, with its
//! SQL, its verdict and its fix. `init`'s preflight refuses on the same [`Check`] values that
//! `validate` prints and a remote `validate` job records, so what `init` refuses and what
//! `validate` reports cannot drift apart.
//!
//! Every query here runs against real servers in the tests; a check that cannot read what it
//! needs says so as a warning instead of passing.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::conninfo::ConnUrl;
use crate::error::{Error, Result, Side};
use crate::filter::QualName;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Works, with a caveat.
    Warn,
    /// Will not work as it is.
    Fail,
}

impl Verdict {
    /// `pass`, `warn` or `fail`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short stable name (`source.wal_level`, …).
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do (empty when it passed).
    pub fix: String,
}

impl Check {
    /// A check with a verdict, a finding and a fix.
    pub fn new(
        name: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            verdict,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    /// A check that passed.
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Verdict::Pass, detail, "")
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        self.verdict == Verdict::Fail
    }

    /// The finding and its fix as one clause, for an error line.
    pub fn problem(&self) -> String {
        if self.fix.is_empty() {
            self.detail.clone()
        } else {
            format!("{} ({})", self.detail, self.fix)
        }
    }
}

/// A check whose catalog query failed: a warning saying so (never a pass).
fn unreadable(name: &'static str, what: &str, e: &tokio_postgres::Error) -> Check {
    Check::new(
        name,
        Verdict::Warn,
        format!("could not read {what}: {}", crate::error::pg_message(e)),
        "",
    )
}

/// The first column of `sql`'s one row; `None` when the query fails or the value is NULL (a
/// setting an older server does not have, read with `current_setting(…, true)`) or of
/// another type, so that no server's answer can panic a check.
pub(crate) async fn one<T: tokio_postgres::types::FromSqlOwned>(
    c: &Client,
    sql: &str,
) -> Option<T> {
    c.query_one(sql, &[])
        .await
        .ok()
        .and_then(|r| r.try_get::<_, Option<T>>(0).ok().flatten())
}

/// A limit and its use (`sql` returns the setting and the count in use): passes while one is
/// free.
async fn capacity(
    c: &Client,
    name: &'static str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
    fix: &str,
) -> Check {
    let read: Option<(i32, i64)> = c
        .query_one(sql, params)
        .await
        .ok()
        .and_then(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)));
    match read {
        Some((max, used)) if i64::from(max) > used => {
            Check::pass(name, format!("{used} of {max} {what} in use"))
        }
        Some((max, used)) => Check::new(
            name,
            Verdict::Fail,
            format!("{used} of {max} {what} in use on the source: none free"),
            fix,
        ),
        None => Check::new(
            name,
            Verdict::Warn,
            format!("{what}: could not be read"),
            "",
        ),
    }
}

/// `wal_level = logical` on the source.
pub async fn wal_level(source: &Client) -> Check {
    let level: Option<String> = one(source, "SELECT current_setting('wal_level')").await;
    match level.as_deref() {
        Some("logical") => Check::pass("source.wal_level", "wal_level = logical"),
        Some(other) => Check::new(
            "source.wal_level",
            Verdict::Fail,
            format!("the source has wal_level = {other}, not logical"),
            "set wal_level = logical on the source and restart it (on RDS: rds.logical_replication = 1)",
        ),
        None => Check::new("source.wal_level", Verdict::Fail, "wal_level could not be read", ""),
    }
}

/// A free replication slot on the source. A slot named `own` is not counted: it is this
/// target's, and a run replaces it (or, for a complete copy, uses it).
pub async fn replication_slots(source: &Client, own: Option<&str>) -> Check {
    capacity(
        source,
        "source.max_replication_slots",
        "SELECT current_setting('max_replication_slots')::int, \
                (SELECT count(*) FROM pg_replication_slots WHERE slot_name IS DISTINCT FROM $1)",
        &[&own],
        "replication slots",
        "raise max_replication_slots (restart) or drop an unused slot",
    )
    .await
}

/// A free WAL sender on the source.
pub async fn wal_senders(source: &Client) -> Check {
    capacity(
        source,
        "source.max_wal_senders",
        "SELECT current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)",
        &[],
        "WAL senders",
        "raise max_wal_senders (restart)",
    )
    .await
}

/// The source role may replicate: `REPLICATION`, superuser, or on RDS and Aurora a member of
/// `rds_replication`.
pub async fn replication_privilege(source: &Client) -> Check {
    let may: Option<bool> = one(
        source,
        "SELECT rolreplication OR rolsuper OR coalesce((SELECT pg_has_role(current_user, r.oid, 'MEMBER') \
                FROM pg_roles r WHERE r.rolname = 'rds_replication'), false) \
         FROM pg_roles WHERE rolname = current_user",
    )
    .await;
    if may == Some(true) {
        Check::pass("source.replication_privilege", "the role may replicate")
    } else {
        Check::new(
            "source.replication_privilege",
            Verdict::Fail,
            "the source role has no REPLICATION privilege",
            "ALTER ROLE <role> REPLICATION, or use a role that has it (on RDS: GRANT rds_replication TO <role>)",
        )
    }
}

/// The target role may create a subscription and the target runs logical replication workers.
/// `password` says whether the connection string the subscription would get (the source URL,
/// or `--sync-source-url`) holds a password: from 16 a subscription owned by a role that is not
/// a superuser must have one there (the server refuses it otherwise; a pgpass file does not
/// count).
pub async fn subscription(target: &Client, password: bool) -> Check {
    let row = target
        .query_one(
            "SELECT rolsuper OR (current_setting('server_version_num')::int >= 160000 \
                    AND pg_has_role(current_user, 'pg_create_subscription', 'USAGE')), \
                    current_setting('max_logical_replication_workers')::int, \
                    rolsuper OR current_setting('server_version_num')::int < 160000 \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        Err(e) => return unreadable("target.subscription", "subscription privileges", &e),
    };
    let mut problems = Vec::new();
    let mut fix = "use a superuser on the target (or on PostgreSQL 16+ a member of \
                   pg_create_subscription), or copy with --no-sync";
    let may_create = row.get::<_, bool>(0);
    if !may_create {
        problems.push(
            "the target role may not create subscriptions (a superuser, or on PostgreSQL 16+ a member of pg_create_subscription)",
        );
    }
    if row.get::<_, i32>(1) < 1 {
        problems.push("the target has max_logical_replication_workers = 0");
    }
    if may_create && !password && !row.get::<_, bool>(2) {
        problems.push(
            "the subscription's connection string would hold no password, which PostgreSQL 16+ \
             requires of a subscription owned by a role that is not a superuser",
        );
        fix = "put the source password in the source URL or in --sync-source-url (the target \
               keeps it in pg_subscription), use a superuser on the target, or copy with \
               --no-sync";
    }
    if problems.is_empty() {
        Check::pass("target.subscription", "the role may create a subscription")
    } else {
        Check::new(
            "target.subscription",
            Verdict::Fail,
            problems.join("; "),
            fix,
        )
    }
}

/// Everything replication after the copy needs of the two servers, in the order `validate`
/// prints them; `own_slot` is the slot of this target (not counted as taken), `target` the
/// target's maintenance session and whether the subscription's connection string would hold a
/// password. The tables' replica identity is [`replica_identity`].
pub async fn replication(
    source: &Client,
    target: Option<(&Client, bool)>,
    own_slot: Option<&str>,
) -> Vec<Check> {
    let mut out = vec![
        wal_level(source).await,
        replication_slots(source, own_slot).await,
        wal_senders(source).await,
        replication_privilege(source).await,
    ];
    if let Some((t, password)) = target {
        out.push(subscription(t, password).await);
    }
    out
}

/// Why logical replication cannot carry a table's UPDATE and DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityGap {
    /// No replica identity: no primary key under `DEFAULT` (a deferrable one does not count),
    /// `NOTHING`, or `USING INDEX` of an index that is gone. Once the table is published, UPDATE and DELETE on it fail on the
    /// source.
    None,
    /// `REPLICA IDENTITY FULL` over a column whose type has no equality operator (`json`,
    /// `point`, `xml` …): the target cannot find the row an UPDATE or DELETE names, and its
    /// apply worker stops (for every table) at the first one.
    FullWithoutEquality(Vec<String>),
}

/// A table that replication cannot keep exact, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProblem {
    /// The table.
    pub table: QualName,
    /// Why.
    pub gap: IdentityGap,
}

impl std::fmt::Display for IdentityProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.gap {
            IdentityGap::None => write!(f, "{} (no primary key or replica identity)", self.table),
            IdentityGap::FullWithoutEquality(cols) => write!(
                f,
                "{} (REPLICA IDENTITY FULL over {}, which has no equality operator)",
                self.table,
                cols.join(", ")
            ),
        }
    }
}

/// The permanent tables of the source (those of `only`, when given) that logical replication
/// cannot carry UPDATE and DELETE for. Publishing one would make the application's UPDATE and
/// DELETE on it fail on the source ([`IdentityGap::None`]) or stop the subscription
/// ([`IdentityGap::FullWithoutEquality`]).
///
/// # Errors
/// [`Error::Sql`].
pub async fn identity_problems(
    source: &Client,
    only: Option<&[QualName]>,
) -> Result<Vec<IdentityProblem>> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = only
        .unwrap_or_default()
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let scope = "c.relkind = 'r' AND c.relpersistence = 'p' \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' \
         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                         AND d.objid = c.oid AND d.deptype = 'e') \
         AND ($1::text[] IS NULL OR (n.nspname::text, c.relname::text) IN \
              (SELECT * FROM unnest($1::text[], $2::text[])))";
    let (s, r): (Option<Vec<&str>>, Option<Vec<&str>>) = match only {
        Some(_) => (Some(schemas), Some(names)),
        None => (None, None),
    };
    let none = source
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {scope} \
                   AND (c.relreplident = 'n' \
                        OR (c.relreplident = 'd' AND NOT EXISTS \
                            (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary \
                               AND i.indimmediate AND i.indisvalid)) \
                        OR (c.relreplident = 'i' AND NOT EXISTS \
                            (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident \
                               AND i.indimmediate AND i.indisvalid))) \
                 ORDER BY 1, 2"
            ),
            &[&s, &r],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "check the tables' replica identity", e))?;
    // Under FULL the subscriber compares every column with its type's default equality
    // (btree or hash opclass, through binary coercion), looking through domains and arrays.
    let full = source
        .query(
            &format!(
                "WITH RECURSIVE full_tables AS ( \
                   SELECT c.oid, n.nspname::text AS s, c.relname::text AS r FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE {scope} AND c.relreplident = 'f'), \
                 base(relid, attname, t) AS ( \
                   SELECT a.attrelid, a.attname::text, a.atttypid FROM pg_attribute a \
                   JOIN full_tables f ON f.oid = a.attrelid \
                   WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                   UNION \
                   SELECT b.relid, b.attname, CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.typelem END \
                   FROM base b JOIN pg_type ty ON ty.oid = b.t \
                   WHERE ty.typtype = 'd' OR (ty.typelem <> 0 AND ty.typlen = -1)) \
                 SELECT f.s, f.r, string_agg(DISTINCT format('%s (%s)', b.attname, format_type(ty.oid, NULL)), ', ') \
                 FROM base b JOIN pg_type ty ON ty.oid = b.t JOIN full_tables f ON f.oid = b.relid \
                 WHERE ty.typtype NOT IN ('d', 'e', 'r', 'm', 'c') AND NOT (ty.typelem <> 0 AND ty.typlen = -1) \
                   AND NOT EXISTS (SELECT 1 FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod \
                       WHERE am.amname IN ('btree', 'hash') AND oc.opcdefault \
                         AND (oc.opcintype = ty.oid OR EXISTS (SELECT 1 FROM pg_cast k \
                              WHERE k.castsource = ty.oid AND k.casttarget = oc.opcintype \
                                AND k.castmethod = 'b'))) \
                 GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            &[&s, &r],
        )
        .await
        .map_err(|e| Error::sql(Side::Source, "check the tables' replica identity", e))?;
    let mut out: Vec<IdentityProblem> = none
        .iter()
        .map(|row| IdentityProblem {
            table: QualName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
            gap: IdentityGap::None,
        })
        .collect();
    out.extend(full.iter().map(|row| {
        IdentityProblem {
            table: QualName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
            gap: IdentityGap::FullWithoutEquality(
                row.get::<_, String>(2)
                    .split(", ")
                    .map(str::to_owned)
                    .collect(),
            ),
        }
    }));
    out.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(out)
}

/// The fix for tables replication cannot carry.
pub const IDENTITY_FIX: &str = "give each a primary key (or REPLICA IDENTITY USING INDEX on a \
     unique index of NOT NULL columns), then `sync --force`; REPLICA IDENTITY FULL works too, at a \
     cost: every UPDATE and DELETE then writes the whole old row to the WAL and the target finds \
     each row by a scan of the table";

/// A list of names for a one-line message: the first few, then how many more.
pub fn name_list(names: &[String], shown: usize) -> String {
    if names.len() <= shown {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..shown].join(", "),
            names.len() - shown
        )
    }
}

/// `source.replica_identity`: tables whose changes replication could not carry (all of the
/// source's, or those of `only`). `init` leaves them out of the publication with a warning
/// (or, with `--sync`, refuses); this check says so before.
pub async fn replica_identity(source: &Client, only: Option<&[QualName]>) -> Check {
    match identity_problems(source, only).await {
        Ok(p) if p.is_empty() => Check::pass(
            "source.replica_identity",
            "every table has a primary key or a usable replica identity",
        ),
        Ok(p) => {
            let names: Vec<String> = p.iter().map(ToString::to_string).collect();
            Check::new(
                "source.replica_identity",
                Verdict::Warn,
                format!(
                    "{} table(s) that replication cannot keep in step: {}; init copies them but \
                     leaves them out of replication (with --sync it refuses), since publishing \
                     them would make UPDATE and DELETE fail on the source or stop the subscription",
                    p.len(),
                    name_list(&names, 5)
                ),
                IDENTITY_FIX,
            )
        }
        Err(e) => Check::new(
            "source.replica_identity",
            Verdict::Warn,
            format!("could not be read: {e}"),
            "",
        ),
    }
}

/// `source.publication_rights`: tables the source role may read but not publish (only their
/// owner may): `init` copies them and leaves them out of replication (with `--sync` it
/// refuses).
pub async fn publication_rights(source: &Client) -> Check {
    const NAME: &str = "source.publication_rights";
    let sql = format!(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE {} AND c.relkind = 'r' AND c.relpersistence = 'p' \
           AND NOT {} ORDER BY 1",
        crate::catalog::USER_NAMESPACES,
        crate::sync::MAY_PUBLISH
    );
    match source.query(&sql, &[]).await {
        Ok(rows) if rows.is_empty() => Check::pass(NAME, "the source role may publish every table"),
        Ok(rows) => {
            let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            Check::new(
                NAME,
                Verdict::Warn,
                format!(
                    "{} table(s) the source role may read but not publish: {}; init copies them \
                     but leaves them out of replication (with --sync it refuses)",
                    names.len(),
                    name_list(&names, 5)
                ),
                crate::sync::PUBLISH_FIX,
            )
        }
        Err(e) => unreadable(NAME, "table owners", &e),
    }
}

/// The oldest source major this tool copies: every catalog query it runs, and the matrix it is
/// tested on (docs/compatibility.md), start at PostgreSQL 12.
pub const OLDEST_SOURCE: u32 = 12;

/// The newest source major the compatibility matrix covers.
pub const NEWEST_TESTED: u32 = 18;

/// The source is a version this tool supports.
pub fn source_version(source_major: u32) -> Check {
    if source_major == 0 {
        Check::new(
            "source.version",
            Verdict::Warn,
            "could not read the source server's version",
            "",
        )
    } else if source_major > NEWEST_TESTED {
        Check::new(
            "source.version",
            Verdict::Warn,
            format!(
                "the source server runs PostgreSQL {source_major}, newer than any this version of \
                 the tool was tested with ({NEWEST_TESTED})"
            ),
            "verify the copy before the switch, or use a release of the tool that lists it",
        )
    } else if source_major >= OLDEST_SOURCE {
        Check::pass("source.version", format!("PostgreSQL {source_major}"))
    } else {
        Check::new(
            "source.version",
            Verdict::Fail,
            format!(
                "the source server runs PostgreSQL {source_major}; this tool copies from \
                 PostgreSQL {OLDEST_SOURCE} and newer"
            ),
            "upgrade the source in place first (pg_upgrade), or copy it with pg_dump and pg_restore",
        )
    }
}

/// The target server's major version is at least the source's.
pub fn target_version(source_major: u32, target_major: u32) -> Check {
    if target_major >= source_major {
        Check::pass(
            "target.version",
            format!("PostgreSQL {target_major} (source {source_major})"),
        )
    } else {
        Check::new(
            "target.version",
            Verdict::Fail,
            format!(
                "the target server runs PostgreSQL {target_major}, older than the source's {source_major}"
            ),
            format!("copy into a server of version {source_major} or newer"),
        )
    }
}

/// Every extension of the source can be installed on the target, by the target role.
pub async fn extensions(source: &Client, target: &Client, target_major: u32) -> Check {
    match crate::target::missing_extensions(source, target).await {
        Ok((needed, missing)) if missing.is_empty() => {
            match untrusted_extensions(target, &needed, target_major).await {
                Ok(untrusted) if !untrusted.is_empty() => Check::new(
                    "target.extensions",
                    Verdict::Warn,
                    format!(
                        "the target role is not a superuser and extension(s) {} are not marked \
                         trusted on the target (before PostgreSQL 13 none is): creating them \
                         fails unless the server lets this role create them, as managed \
                         services' administrator roles may",
                        untrusted.join(", ")
                    ),
                    "copy as a superuser (or the service's administrator role) on the target",
                ),
                _ => Check::pass(
                    "target.extensions",
                    format!("{} extension(s) of the source available", needed.len()),
                ),
            }
        }
        Ok((_, missing)) => Check::new(
            "target.extensions",
            Verdict::Fail,
            format!(
                "extension(s) {} used by the source are not available on the target server",
                missing.join(", ")
            ),
            format!("install them there first (their packages for PostgreSQL {target_major})"),
        ),
        Err(e) => Check::new(
            "target.extensions",
            Verdict::Warn,
            format!("could not compare extensions: {e}"),
            "check that both roles may read pg_extension and pg_available_extensions",
        ),
    }
}

/// Of `needed`, the extensions a role that is not a superuser may not create on the target:
/// from PostgreSQL 13 those whose default version is not marked `trusted`, before 13 every one.
/// Empty for a superuser.
async fn untrusted_extensions(
    target: &Client,
    needed: &[String],
    target_major: u32,
) -> std::result::Result<Vec<String>, tokio_postgres::Error> {
    let superuser: bool = target
        .query_one(crate::catalog::IS_SUPERUSER, &[])
        .await?
        .get(0);
    if superuser || needed.is_empty() {
        return Ok(Vec::new());
    }
    if target_major < 13 {
        return Ok(needed.to_vec());
    }
    let trusted: BTreeSet<String> = target
        .query(
            "SELECT v.name FROM pg_available_extension_versions v \
               JOIN pg_available_extensions e ON e.name = v.name AND e.default_version = v.version \
              WHERE v.name = ANY($1) AND v.trusted",
            &[&needed],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(needed
        .iter()
        .filter(|n| !trusted.contains(*n))
        .cloned()
        .collect())
}

/// How a restore treats the dump's statements on the schema `public`, which every target
/// database already has (see [`public_schema`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicSchema {
    /// Leave out `ALTER SCHEMA public OWNER TO …`: on the source, `public` belongs to its default
    /// owner (the bootstrap superuser before PostgreSQL 15, `pg_database_owner` from 15 on), and
    /// on the target it keeps its own default owner. `pg_dump` writes the bootstrap superuser by
    /// name, which another server may not have, and which only a superuser may give it to.
    pub keep_target_owner: bool,
    /// Run these instead of the dump's `GRANT`s and `REVOKE`s on `public` (`None`: keep the
    /// dump's, as with `--no-privileges`, where there are none). `pg_dump` 15 and later write
    /// them as changes from PostgreSQL 15's defaults, whatever the source's version; on a
    /// target before 15, whose `public` starts with other privileges (everyone may create in
    /// it), they would leave it unlike the source: a source where `CREATE` was revoked from
    /// `PUBLIC` would arrive with it granted again. These statements change the target's
    /// privileges on `public` into the source's, from what they are.
    pub privileges: Option<String>,
    /// Leave out `COMMENT ON SCHEMA public`: the target's is already the source's (the
    /// statement needs the schema's ownership even when it changes nothing). `pg_dump` writes
    /// one whenever the source's is not the default `standard public schema`, even none.
    pub keep_target_comment: bool,
}

/// Whether the schema `public` (`n`) has its default owner: `pg_database_owner` (from 15), or
/// the bootstrap superuser on a server before 15, where initdb gave it that one. On 15 and later
/// the bootstrap superuser is an owner someone chose, which `pg_dump` writes and the restore keeps.
macro_rules! public_default_owner {
    () => {
        "(n.nspowner = 6171 OR (n.nspowner = 10 AND current_setting('server_version_num')::int < 150000))"
    };
}

/// The schema `public`: its owner's oid, whether that is its default owner, the owner's name,
/// who else may do what on it (`grantee:PRIVILEGE`, a `*` after a grantable one, sorted; the
/// grantee quoted as an identifier, so that the bare `PUBLIC` is everyone and a role of that
/// name is `"PUBLIC"`), its comment (empty for none), and its owner quoted the same way.
const PUBLIC_SCHEMA: &str = concat!(
    "SELECT n.nspowner, ",
    public_default_owner!(),
    ", pg_get_userbyid(n.nspowner)::text, \
       ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END \
                    || ':' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END \
             FROM aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner))) a \
             WHERE a.grantee <> n.nspowner ORDER BY 1), \
       coalesce(obj_description(n.oid, 'pg_namespace'), ''), quote_ident(pg_get_userbyid(n.nspowner)) \
     FROM pg_namespace n WHERE n.nspname = 'public'"
);

/// The comment initdb gives the schema public, which `pg_dump` leaves out.
const DEFAULT_COMMENT: &str = "standard public schema";

/// SQL that turns the non-owner privileges `from` on the schema `public` into `to` (both as
/// [`PUBLIC_SCHEMA`] lists them).
pub fn public_privileges_sql(from: &[String], to: &[String]) -> String {
    let split = |e: &str| -> Option<(String, String, bool)> {
        let (g, p) = e.rsplit_once(':')?;
        let (p, grantable) = p.strip_suffix('*').map_or((p, false), |p| (p, true));
        Some((g.to_owned(), p.to_owned(), grantable))
    };
    let mut sql = String::new();
    for (g, p, _) in from
        .iter()
        .filter(|e| !to.contains(e))
        .filter_map(|e| split(e))
    {
        sql.push_str(&format!("REVOKE {p} ON SCHEMA public FROM {g};\n"));
    }
    for (g, p, grantable) in to
        .iter()
        .filter(|e| !from.contains(e))
        .filter_map(|e| split(e))
    {
        let option = if grantable { " WITH GRANT OPTION" } else { "" };
        sql.push_str(&format!("GRANT {p} ON SCHEMA public TO {g}{option};\n"));
    }
    sql
}

/// Whether the target role can give the target's schema `public` the source's owner,
/// privileges and comment, as the dump does; and how the restore treats them.
///
/// `existing` is a session in the target database when it exists and is kept; `None` when the
/// run creates it (from `template0`, whose `public` belongs to the bootstrap superuser before
/// PostgreSQL 15 and lets everyone create in it, and from 15 on belongs to `pg_database_owner`,
/// which the database's owner is, and lets everyone use it only).
pub async fn public_schema(
    source: &Client,
    maintenance: &Client,
    existing: Option<&Client>,
    target_major: u32,
    no_owner: bool,
    no_privileges: bool,
) -> (Check, PublicSchema) {
    const NAME: &str = "target.public_schema";
    let unread = |e: tokio_postgres::Error, side: &str| {
        (
            Check::new(
                NAME,
                Verdict::Warn,
                format!("could not read the schema public on the {side}: {e}"),
                "",
            ),
            PublicSchema::default(),
        )
    };
    let src = match source.query_opt(PUBLIC_SCHEMA, &[]).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return (
                Check::pass(NAME, "the source has no schema public"),
                PublicSchema::default(),
            )
        }
        Err(e) => return unread(e, "source"),
    };
    let (src_default_owner, src_owner, src_grants, src_comment): (
        bool,
        String,
        Vec<String>,
        String,
    ) = (src.get(1), src.get(2), src.get(3), src.get(4));
    let superuser = match maintenance
        .query_one(crate::catalog::IS_SUPERUSER, &[])
        .await
    {
        Ok(r) => r.get::<_, bool>(0),
        Err(e) => return unread(e, "target"),
    };
    // Whether the target role acts as the owner of the target's public, who owns it, who else
    // may do what on it before the restore, and its comment.
    let (acts_as_owner, tgt_owner, tgt_grants, tgt_comment) = match existing {
        None if target_major >= 15 => (
            true,
            "pg_database_owner".to_owned(),
            vec!["PUBLIC:USAGE".to_owned()],
            DEFAULT_COMMENT.to_owned(),
        ),
        None => (
            superuser,
            "the bootstrap superuser".to_owned(),
            vec!["PUBLIC:CREATE".to_owned(), "PUBLIC:USAGE".to_owned()],
            DEFAULT_COMMENT.to_owned(),
        ),
        Some(t) => match t.query_opt(PUBLIC_SCHEMA, &[]).await {
            Ok(Some(r)) => {
                let owner: u32 = r.get(0);
                let acts = superuser
                    || t.query_one(
                        "SELECT pg_has_role(current_user, $1::oid, 'USAGE')",
                        &[&owner],
                    )
                    .await
                    .is_ok_and(|r| r.get::<_, bool>(0));
                (acts, r.get(2), r.get(3), r.get(4))
            }
            // A kept database without it: the dump's statements on public, if any, fail
            // as they would have anyway; nothing is put in their place.
            Ok(None) => {
                return (
                    Check::new(
                        NAME,
                        Verdict::Warn,
                        "the target database has no schema public",
                        "",
                    ),
                    PublicSchema::default(),
                )
            }
            Err(e) => return unread(e, "target"),
        },
    };
    // The dump hands public to the source's owner first (unless that is the default one);
    // what that owner may do itself is not among the grants to change.
    let tgt_grants: Vec<String> = if src_default_owner || no_owner {
        tgt_grants
    } else {
        let own = format!("{}:", src.get::<_, String>(5));
        tgt_grants
            .into_iter()
            .filter(|g| !g.starts_with(&own))
            .collect()
    };
    let plan = PublicSchema {
        keep_target_owner: src_default_owner,
        privileges: (!no_privileges).then(|| public_privileges_sql(&tgt_grants, &src_grants)),
        keep_target_comment: src_comment != DEFAULT_COMMENT && src_comment == tgt_comment,
    };
    if acts_as_owner {
        return (
            Check::pass(
                NAME,
                "the target role may give the schema public the source's owner and privileges",
            ),
            plan,
        );
    }
    let mut problems = Vec::new();
    if !no_owner && !src_default_owner {
        problems.push(format!("belongs to {src_owner} on the source"));
    }
    if plan.privileges.as_ref().is_some_and(|p| !p.is_empty()) {
        let shown = |g: &[String]| {
            if g.is_empty() {
                "none".to_owned()
            } else {
                g.join(", ")
            }
        };
        problems.push(format!(
            "has other privileges on the source ({}) than on the target ({})",
            shown(&src_grants),
            shown(&tgt_grants)
        ));
    }
    let comment_differs = src_comment != DEFAULT_COMMENT && src_comment != tgt_comment;
    if problems.is_empty() && comment_differs {
        // A comment alone does not stop a copy: the target's stays, and the user is told.
        let plan = PublicSchema {
            keep_target_comment: true,
            ..plan
        };
        return (
            Check::new(
                NAME,
                Verdict::Warn,
                format!(
                    "the schema public keeps the target's comment ({tgt_comment:?}) instead of the \
                     source's ({src_comment:?}): only its owner may change it, and the target role \
                     is not"
                ),
                "set it afterwards as its owner (COMMENT ON SCHEMA public IS …) if it matters",
            ),
            plan,
        );
    }
    if problems.is_empty() {
        return (
            Check::pass(
                NAME,
                "the schema public has the same owner and privileges on both sides",
            ),
            plan,
        );
    }
    if comment_differs {
        problems.push("has another comment on the source".to_owned());
    }
    let whose = if existing.is_none() {
        format!("on PostgreSQL {target_major} the schema public of a new database belongs to {tgt_owner}")
    } else {
        format!("on the target it belongs to {tgt_owner}")
    };
    (
        Check::new(
            NAME,
            Verdict::Fail,
            format!(
                "the schema public {}, which only its owner can give it on the target: {whose}, \
                 and the target role is not",
                problems.join(", ")
            ),
            "have a superuser create the target database owned by the target role and run \
             ALTER SCHEMA public OWNER TO that role in it, or copy as a superuser on the target",
        ),
        plan,
    )
}

/// Roles the source's objects need on the target, by what `pg_dump` would write for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissingRoles {
    /// Owners (`ALTER … OWNER TO`; left out with `--no-owner`).
    pub owners: BTreeSet<String>,
    /// Grantees and grantors of privileges and default privileges (left out with
    /// `--no-privileges`).
    pub privileges: BTreeSet<String>,
    /// Roles named by row-level security policies and user mappings (needed either way).
    pub always: BTreeSet<String>,
    /// Owners that exist on the target but that the target role, not a superuser, may not give
    /// objects to: `ALTER … OWNER TO` needs membership in the new owner (from 16 with the
    /// `SET` option).
    pub not_becomable: BTreeSet<String>,
}

/// Which roles the source's objects name that the target server lacks.
///
/// # Errors
/// [`Error::Sql`].
pub async fn missing_roles(source: &Client, target: &Client) -> Result<MissingRoles> {
    let user_ns = crate::catalog::USER_NAMESPACES;
    // Objects an extension made are not dumped (their owner is not written); the public
    // schema's default owner is not written either.
    let not_ext = |cls: &str, oid: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = '{cls}'::regclass \
             AND dep.objid = {oid} AND dep.deptype = 'e')"
        )
    };
    let sql = format!(
        "WITH owners(r) AS (
            SELECT n.nspowner FROM pg_namespace n WHERE {user_ns}
              AND NOT (n.nspname = 'public' AND {public_default})
              AND {nsp}
          UNION SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE {user_ns} AND c.relkind IN ('r','p','v','m','S','f') AND {cls}
          UNION SELECT p.proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE {user_ns} AND {pro}
          UNION SELECT t.typowner FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE {user_ns} AND t.typrelid = 0 AND t.typelem = 0 AND {typ}
          UNION SELECT o.oprowner FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
              WHERE {user_ns} AND {opr}
          UNION SELECT co.collowner FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
              WHERE {user_ns} AND {coll}
          UNION SELECT cv.conowner FROM pg_conversion cv JOIN pg_namespace n ON n.oid = cv.connamespace
              WHERE {user_ns}
          UNION SELECT d.dictowner FROM pg_ts_dict d JOIN pg_namespace n ON n.oid = d.dictnamespace
              WHERE {user_ns} AND {dict}
          UNION SELECT c.cfgowner FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace
              WHERE {user_ns} AND {cfg}
          UNION SELECT s.stxowner FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
              WHERE {user_ns}
          UNION SELECT l.lomowner FROM pg_largeobject_metadata l
          UNION SELECT f.fdwowner FROM pg_foreign_data_wrapper f WHERE {fdw}
          UNION SELECT s.srvowner FROM pg_foreign_server s WHERE {srv}
          UNION SELECT e.evtowner FROM pg_event_trigger e WHERE {evt}
          UNION SELECT p.pubowner FROM pg_publication p WHERE p.pubname !~ '^seren_'
        ), acls(a) AS (
            SELECT n.nspacl FROM pg_namespace n WHERE {user_ns}
              AND NOT (n.nspname = 'public' AND {public_default})
          UNION ALL SELECT c.relacl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE {user_ns}
          UNION ALL SELECT a.attacl FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user_ns} AND a.attacl IS NOT NULL
          UNION ALL SELECT p.proacl FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE {user_ns}
          UNION ALL SELECT t.typacl FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE {user_ns}
          UNION ALL SELECT l.lomacl FROM pg_largeobject_metadata l
          UNION ALL SELECT f.fdwacl FROM pg_foreign_data_wrapper f
          UNION ALL SELECT s.srvacl FROM pg_foreign_server s
          UNION ALL SELECT d.defaclacl FROM pg_default_acl d
        ), privileged(r) AS (
            SELECT (aclexplode(a)).grantee FROM acls WHERE a IS NOT NULL
          UNION SELECT (aclexplode(a)).grantor FROM acls WHERE a IS NOT NULL
          UNION SELECT d.defaclrole FROM pg_default_acl d
          -- The schema public of its default owner: the restore grants on it what others may
          -- do (see public_schema); the owner is the target's own.
          UNION SELECT e.grantee FROM pg_namespace n, aclexplode(n.nspacl) e
              WHERE n.nspname = 'public' AND {public_default} AND e.grantee <> n.nspowner
          -- Privileges on the database itself (see database.rs); its owner's go to the
          -- target's owner.
          UNION SELECT e.grantee FROM pg_database d, aclexplode(d.datacl) e
              WHERE d.datname = current_database() AND e.grantee <> d.datdba
        ), always(r) AS (
            SELECT unnest(p.polroles) FROM pg_policy p
          UNION SELECT u.umuser FROM pg_user_mappings u
        )
        SELECT 'owner', rolname::text FROM owners JOIN pg_roles ON pg_roles.oid = owners.r
        UNION SELECT 'privilege', rolname::text FROM privileged JOIN pg_roles ON pg_roles.oid = privileged.r
        UNION SELECT 'always', rolname::text FROM always JOIN pg_roles ON pg_roles.oid = always.r",
        nsp = not_ext("pg_namespace", "n.oid"),
        public_default = public_default_owner!(),
        cls = not_ext("pg_class", "c.oid"),
        pro = not_ext("pg_proc", "p.oid"),
        typ = not_ext("pg_type", "t.oid"),
        opr = not_ext("pg_operator", "o.oid"),
        coll = not_ext("pg_collation", "co.oid"),
        dict = not_ext("pg_ts_dict", "d.oid"),
        cfg = not_ext("pg_ts_config", "c.oid"),
        fdw = not_ext("pg_foreign_data_wrapper", "f.oid"),
        srv = not_ext("pg_foreign_server", "s.oid"),
        evt = not_ext("pg_event_trigger", "e.oid"),
    );
    let needed: Vec<(String, String)> = source
        .query(&sql, &[])
        .await
        .map_err(|e| Error::sql(Side::Source, "list the roles the source's objects name", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = needed.iter().map(|(_, n)| n.as_str()).collect();
    let present: Vec<(String, bool)> = target
        .query(
            "SELECT r.rolname::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                    OR CASE WHEN current_setting('server_version_num')::int >= 160000
                            THEN pg_has_role(current_user, r.oid, 'SET')
                            ELSE pg_has_role(current_user, r.oid, 'MEMBER') END
             FROM pg_roles r WHERE r.rolname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| Error::sql(Side::Target, "list roles", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = MissingRoles::default();
    for (kind, name) in needed {
        if let Some((_, becomable)) = present.iter().find(|(n, _)| *n == name) {
            if kind == "owner" && !becomable {
                out.not_becomable.insert(name);
            }
            continue;
        }
        match kind.as_str() {
            "owner" => out.owners.insert(name),
            "privilege" => out.privileges.insert(name),
            _ => out.always.insert(name),
        };
    }
    Ok(out)
}

/// `target.roles`: the roles the restore would name exist on the target (`no_owner` and
/// `no_privileges` as `init` would pass them to pg_dump).
pub async fn roles(source: &Client, target: &Client, no_owner: bool, no_privileges: bool) -> Check {
    let missing = match missing_roles(source, target).await {
        Ok(m) => m,
        Err(e) => {
            return Check::new(
                "target.roles",
                Verdict::Warn,
                format!("could not compare roles: {e}"),
                "",
            )
        }
    };
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    if !no_owner && !missing.owners.is_empty() {
        problems.push(format!(
            "role(s) {} own objects in the source but do not exist on the target server",
            list(&missing.owners)
        ));
        fixes.push("or pass --no-owner to give everything to the target role");
    }
    let mut grant = None;
    if !no_owner && !missing.not_becomable.is_empty() {
        problems.push(format!(
            "the target role may not give objects to {}, who own objects in the source (ALTER … \
             OWNER TO needs membership in the new owner, from PostgreSQL 16 with the SET option)",
            list(&missing.not_becomable)
        ));
        grant = Some(format!(
            "GRANT {} TO the target role (or pass --no-owner)",
            list(&missing.not_becomable)
        ));
    }
    if !no_privileges && !missing.privileges.is_empty() {
        problems.push(format!(
            "role(s) {} hold or grant privileges in the source but do not exist on the target server",
            list(&missing.privileges)
        ));
        fixes.push("or pass --no-privileges to leave GRANTs out");
    }
    if !missing.always.is_empty() {
        problems.push(format!(
            "role(s) {} are named by row-level security policies or user mappings but do not \
             exist on the target server",
            list(&missing.always)
        ));
    }
    if problems.is_empty() {
        return Check::pass(
            "target.roles",
            "every role the source's objects name exists on the target",
        );
    }
    // Roles to create first (every problem but the grant's), then the grant.
    let mut fix = Vec::new();
    if problems.len() > usize::from(grant.is_some()) {
        let create =
            "create them on the target first (pg_dumpall --roles-only on the source lists them)";
        fix.push(if fixes.is_empty() {
            create.to_owned()
        } else {
            format!("{create}, {}", fixes.join(", "))
        });
    }
    fix.extend(grant);
    let fix = fix.join("; ");
    Check::new("target.roles", Verdict::Fail, problems.join("; "), fix)
}

/// How one server sorts the source database's text: the default collation's provider (`c`
/// libc, `i` ICU, `b` builtin) and locale, and the version of the library behind that
/// provider on this server (None where it has none or does not say).
async fn sorting(c: &Client, provider: Option<&str>) -> Option<(String, String, Option<String>)> {
    let sql = format!(
        "WITH d AS ({}) SELECT p, l, {} FROM d",
        crate::catalog::DATABASE_COLLATION,
        crate::catalog::collation_library_version("coalesce($1, p)")
    );
    let row = c.query_one(&sql, &[&provider]).await.ok()?;
    Some((row.get(0), row.get(1), row.get(2)))
}

/// `target.collation`: the target sorts text with the same library version as the source.
/// Another glibc or ICU version (the usual case when a major-version upgrade also moves to a
/// newer system) may order strings differently. Every index is built on the target by the
/// target, so none needs a REINDEX; what can change is what the application sees.
pub async fn collation_library(source: &Client, target: &Client) -> Check {
    const NAME: &str = "target.collation";
    let Some((provider, locale, on_source)) = sorting(source, None).await else {
        return Check::new(
            NAME,
            Verdict::Warn,
            "could not read the source's collation",
            "",
        );
    };
    let bytewise = provider == "b" || (provider == "c" && matches!(locale.as_str(), "C" | "POSIX"));
    if bytewise {
        return Check::pass(NAME, format!("text sorts byte by byte ({locale})"));
    }
    let on_target = sorting(target, Some(&provider))
        .await
        .and_then(|(_, _, v)| v);
    let library = if provider == "i" {
        "ICU"
    } else {
        "the C library"
    };
    match (on_source, on_target) {
        (Some(a), Some(b)) if a != b => Check::new(
            NAME,
            Verdict::Warn,
            format!(
                "text in {locale} sorts by {library} collation version {a} on the source and {b} \
                 on the target: indexes are built on the target, so none needs a REINDEX, but \
                 ORDER BY on text may return rows in another order, and a row of a table \
                 partitioned by ranges of text may belong to another partition there"
            ),
            "check the application's sorted output on the target before the switch; verify \
             compares in an order of its own and is not affected",
        ),
        (Some(_), None) if provider == "i" => Check::new(
            NAME,
            Verdict::Warn,
            format!("the source database sorts with ICU ({locale}) and the target server shows no ICU collation"),
            "use a target server built with ICU",
        ),
        (Some(a), _) => Check::pass(NAME, format!("{locale}: {library} collation version {a} on both sides")),
        (None, _) => Check::pass(NAME, format!("{locale} ({library}; the version is not reported)")),
    }
}

/// `target.tablespaces`: tablespaces the source's tables and indexes use exist on the target.
pub async fn tablespaces(source: &Client, target: &Client) -> Check {
    let user_ns = crate::catalog::USER_NAMESPACES;
    let used: std::result::Result<Vec<String>, _> = source
        .query(
            &format!(
                "SELECT DISTINCT t.spcname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_tablespace t ON t.oid = c.reltablespace \
                 WHERE c.reltablespace <> 0 AND {user_ns} ORDER BY 1"
            ),
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect());
    let used = match used {
        Ok(u) => u,
        Err(e) => return unreadable("target.tablespaces", "tablespaces", &e),
    };
    let present: BTreeSet<String> = match target
        .query(
            "SELECT spcname::text FROM pg_tablespace WHERE spcname = ANY($1)",
            &[&used],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => return unreadable("target.tablespaces", "tablespaces", &e),
    };
    let missing: Vec<String> = used.into_iter().filter(|t| !present.contains(t)).collect();
    if missing.is_empty() {
        Check::pass(
            "target.tablespaces",
            "every tablespace the source's tables use exists on the target",
        )
    } else {
        Check::new(
            "target.tablespaces",
            Verdict::Fail,
            format!(
                "tablespace(s) {} hold tables or indexes in the source but do not exist on the target server",
                missing.join(", ")
            ),
            "create them on the target first (CREATE TABLESPACE … LOCATION …)",
        )
    }
}

/// Whether two sessions are on the same database of the same server: by the cluster's system
/// identifier and start time where we may read them, else by start time and port.
pub async fn same_database(
    source: &Client,
    maintenance: &Client,
    s: &ConnUrl,
    t: &ConnUrl,
) -> bool {
    if s.dbname != t.dbname {
        return false;
    }
    let (a, b) = tokio::join!(server_fingerprint(source), server_fingerprint(maintenance));
    a.is_some() && a == b
}

/// What tells one running server from another: its system identifier and its start time.
/// The identifier alone is shared by every server made from the same base backup (a promoted
/// replica, a restored copy), which are different servers.
async fn server_fingerprint(c: &Client) -> Option<String> {
    match c
        .query_one(
            "SELECT system_identifier::text || '/' || pg_postmaster_start_time()::text \
             FROM pg_control_system()",
            &[],
        )
        .await
    {
        Ok(row) => Some(row.get::<_, String>(0)),
        Err(_) => {
            one(
                c,
                "SELECT pg_postmaster_start_time()::text || '/' || current_setting('port')",
            )
            .await
        }
    }
}

/// `target.distinct`: the target is not the source itself.
pub async fn distinct(source: &Client, maintenance: &Client, s: &ConnUrl, t: &ConnUrl) -> Check {
    if same_database(source, maintenance, s, t).await {
        Check::new(
            "target.distinct",
            Verdict::Fail,
            format!("source and target are the same database ({})", t.redacted()),
            "name a different target",
        )
    } else {
        Check::pass(
            "target.distinct",
            "the target is another database than the source",
        )
    }
}

/// `source.leftover_slots`: inactive replication slots this tool made (`seren_…`), with the
/// WAL each keeps on the source. `status` and `init` drop the one an interrupted copy into
/// the same target left; any other is named here with the way to drop it.
pub async fn leftover_slots(source: &Client) -> Check {
    match crate::sync::inactive_slots(source).await {
        Ok(slots) if slots.is_empty() => Check::pass(
            "source.leftover_slots",
            "no inactive replication slot of postgres-seren-replicator",
        ),
        Ok(slots) => {
            let list: Vec<String> = slots.iter().map(ToString::to_string).collect();
            Check::new(
                "source.leftover_slots",
                Verdict::Warn,
                format!(
                    "inactive replication slot(s) of postgres-seren-replicator: {}; a slot nobody \
                     reads from keeps WAL until the disk fills",
                    list.join("; ")
                ),
                "run `postgres-seren-replicator status` with the slot's target (it drops one an \
                 interrupted copy left), `sync --stop` to end a replication, or SELECT \
                 pg_drop_replication_slot('<slot>') on the source once nothing uses it",
            )
        }
        Err(e) => Check::new(
            "source.leftover_slots",
            Verdict::Warn,
            format!("could not list replication slots: {e}"),
            "",
        ),
    }
}

/// Turn failed checks into the error `init` refuses with (`None` when none failed).
pub fn refusal(checks: &[Check]) -> Option<Error> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.failed())
        .map(Check::problem)
        .collect();
    (!failed.is_empty()).then(|| Error::Preflight(failed.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_schemas_privileges_become_the_sources_from_what_the_target_has() {
        let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // A hardened 12 source (CREATE revoked from PUBLIC) into a new 12 database.
        assert_eq!(
            public_privileges_sql(
                &v(&["PUBLIC:CREATE", "PUBLIC:USAGE"]),
                &v(&["PUBLIC:USAGE"])
            ),
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n"
        );
        // A 12 source as initdb made it into a new 18 database.
        assert_eq!(
            public_privileges_sql(
                &v(&["PUBLIC:USAGE"]),
                &v(&["PUBLIC:CREATE", "PUBLIC:USAGE"])
            ),
            "GRANT CREATE ON SCHEMA public TO PUBLIC;\n"
        );
        assert_eq!(
            public_privileges_sql(
                &v(&["PUBLIC:USAGE", "\"Mixed Case\":USAGE"]),
                &v(&["\"Mixed Case\":USAGE*"])
            ),
            "REVOKE USAGE ON SCHEMA public FROM PUBLIC;\n\
             REVOKE USAGE ON SCHEMA public FROM \"Mixed Case\";\n\
             GRANT USAGE ON SCHEMA public TO \"Mixed Case\" WITH GRANT OPTION;\n"
        );
        assert_eq!(
            public_privileges_sql(&v(&["PUBLIC:USAGE"]), &v(&["PUBLIC:USAGE"])),
            ""
        );
    }

    #[test]
    fn sources_before_12_are_refused_and_older_targets_too() {
        for major in [9, 10, 11] {
            let c = source_version(major);
            assert_eq!(c.verdict, Verdict::Fail, "{major}");
            assert!(c.detail.contains("PostgreSQL 12 and newer"), "{}", c.detail);
        }
        for major in [12, 15, 18] {
            assert_eq!(source_version(major).verdict, Verdict::Pass, "{major}");
        }
        assert_eq!(source_version(19).verdict, Verdict::Warn);
        assert_eq!(source_version(0).verdict, Verdict::Warn);
        assert_eq!(target_version(12, 18).verdict, Verdict::Pass);
        assert_eq!(target_version(17, 17).verdict, Verdict::Pass);
        assert_eq!(target_version(18, 15).verdict, Verdict::Fail);
    }

    #[test]
    fn a_failed_check_reads_as_one_clause_with_its_fix() {
        let c = Check::new("x", Verdict::Fail, "it is off", "turn it on");
        assert_eq!(c.problem(), "it is off (turn it on)");
        assert!(refusal(&[Check::pass("y", "fine")]).is_none());
        let e = refusal(&[c, Check::pass("y", "fine")]).expect("refused");
        assert_eq!(e.to_string(), "it is off (turn it on)");
    }

    #[test]
    fn long_name_lists_are_cut() {
        let names: Vec<String> = (1..=7).map(|i| format!("t{i}")).collect();
        assert_eq!(name_list(&names[..2], 5), "t1, t2");
        assert_eq!(name_list(&names, 5), "t1, t2, t3, t4, t5 and 2 more");
    }
}

//! What the source holds, read from its catalogs inside the run's snapshot: tables with their
//! copyable columns and sizes, sequences, large objects, and which table each index and
//! constraint belongs to. Every query here runs against a real server in the tests.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::error::{Error, Result, Side};
use crate::filter::QualName;

/// The size of `url`'s database on disk, when it can be read within `within` (a remote job's
/// worker is sized by it; the worker may reach databases this machine cannot, so no answer is
/// not an error).
pub async fn database_size(
    url: &crate::conninfo::ConnUrl,
    within: std::time::Duration,
) -> Option<u64> {
    let mut url = url.clone();
    url.connect_timeout = url.connect_timeout.min(within);
    let attempt = async {
        let client = crate::connect::connect(&url, Side::Source).await.ok()?;
        let row = client
            .query_one(
                "SELECT pg_catalog.pg_database_size(current_database())",
                &[],
            )
            .await
            .ok()?;
        u64::try_from(row.get::<_, i64>(0)).ok()
    };
    tokio::time::timeout(within, attempt).await.ok().flatten()
}

/// A table whose rows the run copies.
#[derive(Debug, Clone)]
pub struct Table {
    /// The source's OID (only meaningful on the source).
    pub oid: u32,
    /// Schema and name.
    pub name: QualName,
    /// Columns to copy, in order: generated columns are left out.
    pub columns: Vec<String>,
    /// Whether every column's type has binary send/receive functions.
    pub binary_ok: bool,
    /// Heap pages (from the file size, not statistics).
    pub pages: u64,
    /// Heap bytes plus TOAST bytes: what sizing and ordering go by.
    pub bytes: u64,
    /// Estimated rows (`reltuples`; `None` when never analyzed).
    pub est_rows: Option<u64>,
    /// Whether other tables inherit from it (its own rows are copied with `ONLY`).
    pub has_children: bool,
    /// Rows to copy, as a predicate: extension configuration tables dump only rows matching
    /// their registered condition.
    pub extension_condition: Option<String>,
    /// Estimated cost of building its indexes, in heap-byte equivalents: each index's size on
    /// the source weighted by how slow its access method builds (see [`index_build_weight`]).
    pub index_cost: u64,
}

/// How much slower an index builds than the same number of heap bytes copies, measured here
/// (PostgreSQL 15, 2 cores): a 64 MB btree builds at ~55 MB/s against ~90 MB/s of COPY; a
/// 62 MB GIN over jsonb takes 6–8 s, ~10× the btree rate.
pub fn index_build_weight(access_method: &str) -> u64 {
    match access_method {
        "btree" | "hash" => 2,
        "brin" => 1,
        "gin" => 10,
        "gist" | "spgist" => 8,
        _ => 4,
    }
}

/// An index of the source.
#[derive(Debug, Clone)]
pub struct Index {
    /// The table (or materialized view) it belongs to.
    pub table: QualName,
    /// Its size weighted by how slow its access method builds (see [`index_build_weight`]).
    pub build_cost: u64,
}

/// A primary key or unique constraint that can be built in two steps: `CREATE UNIQUE INDEX`
/// (a SHARE lock, so it builds alongside the table's other indexes) and then `ADD CONSTRAINT …
/// USING INDEX` (a brief ACCESS EXCLUSIVE lock). Only plain ones qualify: an ordinary table that
/// is not a partition, not deferrable, key and included columns without non-default operator
/// classes or collations, no `NULLS NOT DISTINCT`, the index named as the constraint and in the
/// default tablespace. The statements are schema-qualified (the target runs post-data with an
/// empty `search_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeparableConstraint {
    /// `CREATE UNIQUE INDEX name ON schema.table USING btree (cols) [INCLUDE (…)] [WITH (…)]`.
    pub index_sql: String,
    /// `ALTER TABLE ONLY schema.table ADD CONSTRAINT name {PRIMARY KEY | UNIQUE} USING INDEX name`.
    pub attach_sql: String,
}

/// Everything the run needs to know about the source.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Tables with storage: ordinary tables, partitions, unlogged tables. Partitioned parents
    /// (no storage of their own) and foreign tables are not here.
    pub tables: Vec<Table>,
    /// Sequences.
    pub sequences: Vec<QualName>,
    /// Every relation that pg_dump's `--exclude-table` patterns can name (tables, views,
    /// materialized views, sequences, foreign and partitioned tables), to resolve filters.
    pub relations: Vec<QualName>,
    /// Index (schema, name) → its table and build cost.
    pub indexes: HashMap<(String, String), Index>,
    /// Constraint (schema, "table constraint") → its table, as pg_dump tags them.
    pub constraint_tables: HashMap<(String, String), QualName>,
    /// Constraint (schema, "table constraint") → how to build it as an index first, for the
    /// primary keys and unique constraints that can be (see [`SeparableConstraint`]).
    pub separable_constraints: HashMap<(String, String), SeparableConstraint>,
    /// Index (schema, name) → its estimated build cost (see [`index_build_weight`]).
    pub index_costs: HashMap<(String, String), u64>,
    /// Large object OIDs.
    pub large_objects: Vec<u32>,
    /// Extensions installed in the source database (name, version).
    pub extensions: Vec<(String, String)>,
}

pub(crate) const USER_NAMESPACES: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'";

/// Read the catalog. Run it in the snapshot's transaction so sizes and names match the copy.
///
/// # Errors
/// [`Error::Sql`] when a query fails (missing privileges on a catalog, lost connection).
pub async fn read(client: &Client) -> Result<Catalog> {
    let q = |context: &'static str| move |e| Error::sql(Side::Source, context, e);
    let member_of_extension = "EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = \
         'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";
    let tables_sql = format!(
        "WITH config AS (
             SELECT unnest(e.extconfig) AS reloid, unnest(e.extcondition) AS cond
             FROM pg_extension e WHERE e.extconfig IS NOT NULL)
         SELECT c.oid, n.nspname, c.relname,
                (pg_relation_size(c.oid) / current_setting('block_size')::int)::int8 AS pages,
                (pg_relation_size(c.oid)
                  + CASE WHEN c.reltoastrelid = 0 THEN 0
                         ELSE pg_total_relation_size(c.reltoastrelid) END)::int8 AS bytes,
                c.reltuples::float8,
                EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid) AS has_children,
                cfg.cond
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN config cfg ON cfg.reloid = c.oid
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_NAMESPACES}
           AND (NOT {member_of_extension} OR cfg.reloid IS NOT NULL)
         ORDER BY n.nspname, c.relname"
    );
    let rows = client
        .query(&tables_sql, &[])
        .await
        .map_err(q("list tables"))?;
    let mut tables: Vec<Table> = Vec::with_capacity(rows.len());
    let mut by_oid: HashMap<u32, usize> = HashMap::new();
    for row in rows {
        let oid: u32 = row.get(0);
        let reltuples: f64 = row.get(5);
        let cond: Option<String> = row.get(7);
        by_oid.insert(oid, tables.len());
        tables.push(Table {
            oid,
            name: QualName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
            columns: Vec::new(),
            binary_ok: true,
            pages: row.get::<_, i64>(3).max(0) as u64,
            bytes: row.get::<_, i64>(4).max(0) as u64,
            est_rows: (reltuples >= 0.0).then_some(reltuples as u64),
            has_children: row.get(6),
            index_cost: 0,
            extension_condition: cond
                .map(|c| {
                    c.trim()
                        .trim_start_matches("WHERE")
                        .trim_start_matches("where")
                        .trim()
                        .to_owned()
                })
                .filter(|c| !c.is_empty()),
        });
    }

    // A type can travel in binary only if it and every type its binary form is made of (an
    // array's element, a domain's base, a range's subtype, a multirange's range) have send and
    // receive functions: `range_send` fails on a subtype without one (a range over `seg`), which
    // text would carry. Composite types go as text. So do the reg* types: their binary form is
    // the OID, which names another object (or none) on the target, while their text form is the
    // object's qualified name. And arrays whose element type is not built in (OID 10000 and
    // over: enums, domains, extension types, and the domains of information_schema, whose OIDs
    // differ from server to server): an array's binary form carries its element type's OID,
    // which the target's `array_recv` checks against its own. (pg_range's `rngmultitypid` is
    // read through `to_jsonb`: 12 and 13 have no multiranges.)
    let columns = client
        .query(
            "WITH RECURSIVE base(root, t) AS (
                 SELECT a.atttypid, a.atttypid FROM pg_attribute a
                 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
               UNION
                 SELECT b.root, CASE ty.typtype WHEN 'd' THEN ty.typbasetype
                                                WHEN 'r' THEN r.rngsubtype
                                                WHEN 'm' THEN mr.rngtypid
                                                ELSE ty.typelem END
                 FROM base b JOIN pg_type ty ON ty.oid = b.t
                 LEFT JOIN pg_range r ON r.rngtypid = ty.oid
                 LEFT JOIN pg_range mr ON ty.typtype = 'm'
                      AND (to_jsonb(mr)->>'rngmultitypid')::oid = ty.oid
                 WHERE ty.typtype IN ('d', 'r', 'm') OR (ty.typelem <> 0 AND ty.typlen = -1))
             , ok AS (
                 SELECT b.root, bool_and(ty.typsend <> 0 AND ty.typreceive <> 0 AND ty.typtype <> 'c'
                     AND NOT (ty.typnamespace = 'pg_catalog'::regnamespace AND ty.typname IN
                       ('regproc', 'regprocedure', 'regoper', 'regoperator', 'regclass', 'regtype',
                        'regrole', 'regnamespace', 'regconfig', 'regdictionary', 'regcollation'))
                     AND NOT (ty.typelem <> 0 AND ty.typlen = -1 AND ty.typelem >= 10000)) AS ok
                 FROM base b JOIN pg_type ty ON ty.oid = b.t GROUP BY b.root)
             SELECT a.attrelid, a.attname, a.attgenerated <> '' AS generated, coalesce(ok.ok, false)
             FROM pg_attribute a LEFT JOIN ok ON ok.root = a.atttypid
             WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attrelid, a.attnum",
            &[&tables.iter().map(|t| t.oid).collect::<Vec<u32>>()],
        )
        .await
        .map_err(q("list columns"))?;
    for row in columns {
        let oid: u32 = row.get(0);
        let Some(&i) = by_oid.get(&oid) else { continue };
        let generated: bool = row.get(2);
        if generated {
            continue;
        }
        tables[i].columns.push(row.get(1));
        tables[i].binary_ok &= row.get::<_, bool>(3);
    }

    let relations = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r','p','v','m','S','f') AND c.relpersistence <> 't'
                   AND {USER_NAMESPACES} AND NOT {member_of_extension}
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(q("list relations"))?;
    let mut catalog = Catalog {
        tables,
        ..Catalog::default()
    };
    for row in relations {
        let name = QualName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        if row.get::<_, String>(2) == "S" {
            catalog.sequences.push(name.clone());
        }
        catalog.relations.push(name);
    }

    for row in client
        .query(
            "SELECT n.nspname, ic.relname, tn.nspname, tc.relname, i.indrelid, am.amname::text,
                    pg_relation_size(i.indexrelid)::int8
             FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
             JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
             JOIN pg_am am ON am.oid = ic.relam
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'",
            &[],
        )
        .await
        .map_err(q("list indexes"))?
    {
        let build_cost = row.get::<_, i64>(6).max(0) as u64 * index_build_weight(row.get::<_, &str>(5));
        if let Some(&i) = by_oid.get(&row.get::<_, u32>(4)) {
            catalog.tables[i].index_cost += build_cost;
        }
        catalog.indexes.insert(
            (row.get(0), row.get(1)),
            Index {
                table: QualName::new(row.get::<_, String>(2), row.get::<_, String>(3)),
                build_cost,
            },
        );
    }
    for row in client
        .query(
            "SELECT n.nspname, tc.relname || ' ' || co.conname, tc.relname
             FROM pg_constraint co
             JOIN pg_class tc ON tc.oid = co.conrelid JOIN pg_namespace n ON n.oid = tc.relnamespace
             WHERE co.conrelid <> 0 AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(q("list constraints"))?
    {
        let schema: String = row.get(0);
        catalog.constraint_tables.insert(
            (schema.clone(), row.get(1)),
            QualName::new(schema, row.get::<_, String>(2)),
        );
    }

    for row in client
        .query(
            "SELECT n.nspname, tc.relname || ' ' || co.conname, quote_ident(n.nspname),
                    quote_ident(tc.relname), quote_ident(co.conname), co.contype = 'p',
                    (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n)
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE k.n <= i.indnkeyatts),
                    (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n)
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE k.n > i.indnkeyatts),
                    array_to_string(ic.reloptions, ', ')
             FROM pg_constraint co
             JOIN pg_class tc ON tc.oid = co.conrelid JOIN pg_namespace n ON n.oid = tc.relnamespace
             JOIN pg_index i ON i.indexrelid = co.conindid
             JOIN pg_class ic ON ic.oid = co.conindid
             JOIN pg_am am ON am.oid = ic.relam
             WHERE co.contype IN ('p', 'u') AND NOT co.condeferrable
               AND tc.relkind = 'r' AND NOT tc.relispartition
               AND ic.relname = co.conname AND ic.reltablespace = 0 AND am.amname = 'btree'
               AND i.indexprs IS NULL AND i.indpred IS NULL
               AND pg_get_constraintdef(co.oid) !~ 'NULLS NOT DISTINCT'
               AND NOT EXISTS (
                   SELECT 1 FROM generate_series(1, i.indnatts) AS k(n)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.n - 1]
                   WHERE pg_get_indexdef(i.indexrelid, k.n, false) <> quote_ident(a.attname))
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(q("list constraints to build as indexes"))?
    {
        let (schema, table, name): (String, String, String) = (row.get(2), row.get(3), row.get(4));
        let (Some(keys), include, options): (Option<String>, Option<String>, Option<String>) =
            (row.get(6), row.get(7), row.get(8))
        else {
            continue;
        };
        let mut index_sql =
            format!("CREATE UNIQUE INDEX {name} ON {schema}.{table} USING btree ({keys})");
        if let Some(inc) = include {
            index_sql.push_str(&format!(" INCLUDE ({inc})"));
        }
        if let Some(opts) = options.filter(|o| !o.is_empty()) {
            index_sql.push_str(&format!(" WITH ({opts})"));
        }
        index_sql.push(';');
        let kind = if row.get::<_, bool>(5) {
            "PRIMARY KEY"
        } else {
            "UNIQUE"
        };
        let attach_sql = format!(
            "ALTER TABLE ONLY {schema}.{table} ADD CONSTRAINT {name} {kind} USING INDEX {name};"
        );
        catalog.separable_constraints.insert(
            (row.get(0), row.get(1)),
            SeparableConstraint {
                index_sql,
                attach_sql,
            },
        );
    }

    catalog.large_objects = client
        .query("SELECT oid FROM pg_largeobject_metadata ORDER BY oid", &[])
        .await
        .map_err(q("list large objects"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    catalog.extensions = client
        .query(
            "SELECT extname, extversion FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .map_err(q("list extensions"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(catalog)
}

/// The current database's default collation as `p`, its provider (`c` libc, `i` ICU, `b`
/// builtin), and `l`, its locale: a query that runs on every version from 12 (`datlocprovider`
/// exists from 15 on; an ICU or builtin locale is `daticulocale` in 15 and 16, `datlocale` from
/// 17 on).
pub(crate) const DATABASE_COLLATION: &str = "SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') AS p, \
       CASE WHEN coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c' THEN d.datcollate \
            ELSE coalesce(to_jsonb(d) ->> 'daticulocale', to_jsonb(d) ->> 'datlocale', '') END AS l \
     FROM pg_database d WHERE d.datname = current_database()";

/// A SQL expression: the version this server's library reports for the collations of the
/// provider `provider` (a SQL expression giving `c` or `i`; NULL for others): glibc's for any
/// libc locale, ICU's collator version (of `und-x-icu` where there is one).
pub(crate) fn collation_library_version(provider: &str) -> String {
    format!(
        "CASE {provider} \
           WHEN 'c' THEN (SELECT pg_collation_actual_version(oid) FROM pg_collation \
                          WHERE collprovider = 'c' AND collname NOT IN ('C', 'POSIX', 'ucs_basic') \
                          ORDER BY collname LIMIT 1) \
           WHEN 'i' THEN (SELECT pg_collation_actual_version(oid) FROM pg_collation \
                          WHERE collprovider = 'i' ORDER BY collname <> 'und-x-icu', collname LIMIT 1) \
         END"
    )
}

/// Whether the connected role is a superuser: one row, one `bool`.
pub const IS_SUPERUSER: &str =
    "SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)";

/// The server's major version (`server_version_num / 10000`).
///
/// # Errors
/// [`Error::Sql`] when the query fails.
pub async fn major_version(client: &Client, side: Side) -> Result<u32> {
    let v: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .map_err(|e| Error::sql(side, "read the server version", e))?
        .get(0);
    v.parse::<u32>()
        .map(|n| n / 10000)
        .map_err(|_| Error::Preflight(format!("the {side} reported an unreadable version '{v}'")))
}

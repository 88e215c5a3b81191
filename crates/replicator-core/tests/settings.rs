//! A source whose database renders values its own way (`DateStyle = 'SQL, DMY'`,
//! `extra_float_digits = 0`, `IntervalStyle = sql_standard`, `bytea_output = escape`, another
//! time zone) into a target server with other defaults (`DateStyle = 'SQL, MDY'`, a third time
//! zone): every value arrives unchanged, through text COPY (a composite column forces it, and
//! `--copy-format text` forces it for every table) as through binary, `reg*` columns keep naming
//! the right object, and `verify` calls the two equal. The target database gets the source
//! database's own settings, owner, comment, connection limit and privileges.

mod common;

use common::*;
use pg_harness::{Cluster, Options};
use replicator_core::verify::{self, VerifyOptions};
use replicator_core::FormatChoice;

const SCHEMA: &str = "
CREATE TYPE pair AS (x int, y text);
CREATE TABLE ref_target (id int PRIMARY KEY);
-- A composite column: the whole table goes through text COPY.
CREATE TABLE texty (id int PRIMARY KEY, p pair, d date, f float8, r real, i interval,
                    ts timestamptz, b bytea, rc regclass, m money);
-- The same values, binary-capable but for the regclass.
CREATE TABLE plain (id int PRIMARY KEY, d date, f float8, r real, i interval, ts timestamptz,
                    b bytea, m money);
INSERT INTO texty VALUES
  (1, '(1,a)', '2024-01-02', pi(), 1.1::real, '1 year 2 mons -3 days 04:05:06.789',
   '2024-03-04 05:06:07.891+02', '\\x00ff5c27', 'public.ref_target', 12.34),
  (2, '(2,\"b, c\")', '1999-12-31', 1e-300, 3.4e38::real, '-1 day +02:00',
   '1970-01-01 00:00:00+00', '\\x', 'pg_catalog.pg_class', -0.01),
  (3, NULL, '0044-03-15 BC', 'NaN', '-Infinity', '178000000 years', 'infinity', NULL, NULL, NULL);
INSERT INTO plain SELECT id, d, f, r, i, ts, b, m FROM texty;
";

/// Every row of `table` as text, rendered the same way whatever the server's defaults.
fn rows(c: &Cluster, db: &str, table: &str) -> String {
    let out = c
        .psql_command(db)
        .env(
            "PGOPTIONS",
            "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 \
             -c bytea_output=hex -c timezone=UTC -c lc_monetary=C -c search_path=",
        )
        .args([
            "-c",
            &format!("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM public.{table} t"),
        ])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// What a database has of its own, its name left out.
fn database_properties(c: &Cluster, db: &str) -> String {
    c.psql(
        "postgres",
        &format!(
            "SELECT pg_get_userbyid(d.datdba), shobj_description(d.oid, 'pg_database'),
                    d.datconnlimit, d.datacl::text,
                    (SELECT string_agg(coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '*')
                                       || ' ' || s.setconfig::text, '; ' ORDER BY s.setrole)
                     FROM pg_db_role_setting s WHERE s.setdatabase = d.oid)
             FROM pg_database d WHERE d.datname = '{db}'"
        ),
    )
}

fn check(format: FormatChoice) {
    let src = Cluster::start(&Options {
        settings: vec![("timezone".into(), "'Asia/Kolkata'".into())],
        ..Options::source()
    });
    let dst = Cluster::start(&Options {
        settings: vec![
            ("timezone".into(), "'America/New_York'".into()),
            ("datestyle".into(), "'SQL, MDY'".into()),
            ("extra_float_digits".into(), "-3".into()),
        ],
        ..Options::target()
    });
    src.create_db("app");
    src.psql("app", SCHEMA);
    src.psql(
        "postgres",
        "ALTER DATABASE app SET datestyle = 'SQL, DMY';
         ALTER DATABASE app SET extra_float_digits = 0;
         ALTER DATABASE app SET intervalstyle = 'sql_standard';
         ALTER DATABASE app SET bytea_output = 'escape';
         ALTER DATABASE app SET search_path = 'pg_catalog';",
    );
    // The database's own properties: pg_dump writes them only with --create.
    for c in [&src, &dst] {
        c.psql(
            "postgres",
            "CREATE ROLE shop_owner; CREATE ROLE \"Report Writer\";",
        );
    }
    src.psql(
        "postgres",
        "ALTER DATABASE app OWNER TO shop_owner;
         COMMENT ON DATABASE app IS 'the shop''s data';
         ALTER DATABASE app CONNECTION LIMIT 50;
         REVOKE CONNECT, TEMPORARY ON DATABASE app FROM PUBLIC;
         GRANT CONNECT ON DATABASE app TO \"Report Writer\" WITH GRANT OPTION;
         ALTER DATABASE app SET temp_tablespaces = '';
         ALTER DATABASE app SET default_transaction_read_only = on;
         ALTER ROLE \"Report Writer\" IN DATABASE app SET search_path = app, \"$user\", \"Odd, Schema\";
         ALTER ROLE \"Report Writer\" IN DATABASE app SET statement_timeout = '5s';",
    );
    let mut opts = options(&src, "app", &dst, "copy");
    opts.format = format;
    let (result, _) = run_init(opts.clone());
    result.expect("init");
    for table in ["texty", "plain"] {
        assert_eq!(
            rows(&dst, "copy", table),
            rows(&src, "app", table),
            "{table} arrived changed ({format:?})"
        );
    }
    assert_eq!(
        database_properties(&dst, "copy"),
        database_properties(&src, "app"),
        "the database's owner, comment, limit, privileges and settings"
    );
    assert_eq!(
        dst.psql(
            "copy",
            "SELECT rc::oid = 'public.ref_target'::regclass::oid FROM public.texty WHERE id = 1"
        ),
        "t",
        "the regclass names the target's own table"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt
        .block_on(verify::verify(VerifyOptions::new(opts.source, opts.target)))
        .expect("verify");
    assert!(report.equal(), "verify: {:?}", report.tables);
}

#[test]
fn odd_session_defaults_change_no_value_in_binary_and_text_copies() {
    check(FormatChoice::Auto);
}

#[test]
fn odd_session_defaults_change_no_value_with_copy_format_text() {
    check(FormatChoice::Text);
}

/// A text primary key on two servers whose collations sort it differently (ICU `en-US` puts
/// `a` before `B`, "C" puts `B` first), as after an upgrade onto a newer glibc or ICU, or into
/// a database of another locale: `verify` cuts and orders the ranges alike on both sides, so
/// equal rows compare equal, and a changed row is still found.
#[test]
fn verify_is_not_fooled_by_two_collations_that_sort_keys_differently() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.psql(
        "postgres",
        "CREATE DATABASE app TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'",
    );
    dst.create_db("app");
    let schema = "CREATE TABLE words (w text PRIMARY KEY, n int); \
                  INSERT INTO words SELECT CASE WHEN g % 2 = 0 THEN upper(md5(g::text)) \
                  ELSE md5(g::text) END, g FROM generate_series(1, 2000) g;";
    src.psql("app", schema);
    dst.psql("app", schema);
    assert_ne!(
        src.psql(
            "app",
            "SELECT string_agg(w, ',' ORDER BY w) FROM (SELECT w FROM words ORDER BY w LIMIT 20) x"
        ),
        dst.psql(
            "app",
            "SELECT string_agg(w, ',' ORDER BY w) FROM (SELECT w FROM words ORDER BY w LIMIT 20) x"
        ),
        "the two databases sort the keys differently"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut opts = VerifyOptions::new(url(&src, "app"), url(&dst, "app"));
    opts.chunk_rows = 100;
    let report = rt.block_on(verify::verify(opts.clone())).expect("verify");
    assert!(report.equal(), "verify: {:?}", report.tables);
    assert!(report.tables[0].ranges > 10, "{:?}", report.tables);

    dst.psql("app", "UPDATE words SET n = -1 WHERE n = 777");
    let report = rt.block_on(verify::verify(opts)).expect("verify");
    assert!(!report.equal());
    assert_eq!(report.tables[0].mismatches.len(), 1, "{:?}", report.tables);
}

/// Tables whose columns are named like what a checksum statement names itself (`t`, the
/// table's own name, `seren_rn`), a primary key with `INCLUDE` columns, a table without a key
/// on the target, and one without a key at all: `verify` calls equal rows equal and finds a
/// change in any column of any of them.
#[test]
fn verify_sees_a_change_in_every_column_whatever_the_columns_are_called() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    dst.create_db("app");
    let schema = "CREATE TABLE t (id int PRIMARY KEY, t int, v text); \
                  CREATE TABLE odd (id int PRIMARY KEY, odd int, v text); \
                  CREATE TABLE rn (seren_rn int PRIMARY KEY, seren_k1 int, v text); \
                  CREATE TABLE inc (id int, v text, PRIMARY KEY (id) INCLUDE (v)); \
                  CREATE TABLE keyless_there (w text PRIMARY KEY, v text); \
                  CREATE TABLE nokey (t int, v text);";
    let rows = "INSERT INTO t SELECT g, 1, 'x' FROM generate_series(1, 300) g; \
                INSERT INTO odd SELECT g, 1, 'x' FROM generate_series(1, 300) g; \
                INSERT INTO rn SELECT g, 1, 'x' FROM generate_series(1, 300) g; \
                INSERT INTO inc SELECT g, 'x' FROM generate_series(1, 300) g; \
                INSERT INTO keyless_there SELECT md5(g::text), 'x' FROM generate_series(1, 300) g; \
                INSERT INTO nokey SELECT 1, 'x' FROM generate_series(1, 300) g;";
    src.psql("app", &format!("{schema} {rows}"));
    dst.psql(
        "app",
        &format!("{schema} ALTER TABLE keyless_there DROP CONSTRAINT keyless_there_pkey; {rows}"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut opts = VerifyOptions::new(url(&src, "app"), url(&dst, "app"));
    opts.chunk_rows = 50;
    let report = rt.block_on(verify::verify(opts.clone())).expect("verify");
    assert!(report.equal(), "verify: {:?}", report.tables);
    assert_eq!(report.tables.len(), 6, "{:?}", report.tables);
    for table in &report.tables {
        if table.table.name != "nokey" {
            assert!(table.ranges >= 6, "cut into ranges: {table:?}");
        }
    }

    // One changed value per table, in a column that is neither the key nor named `t`.
    dst.psql(
        "app",
        "UPDATE t SET v = 'changed' WHERE id = 150; UPDATE odd SET v = 'changed' WHERE id = 150; \
         UPDATE rn SET v = 'changed' WHERE seren_rn = 150; \
         UPDATE inc SET v = 'changed' WHERE id = 150; \
         UPDATE keyless_there SET v = 'changed' WHERE w = md5('150'); \
         UPDATE nokey SET v = 'changed' WHERE ctid = (SELECT min(ctid) FROM nokey);",
    );
    let report = rt.block_on(verify::verify(opts)).expect("verify");
    for table in &report.tables {
        assert!(
            !table.equal(),
            "the change in {} is found: {table:?}",
            table.table
        );
        if table.table.name != "nokey" {
            assert_eq!(table.mismatches.len(), 1, "{table:?}");
        }
    }
}

/// A setting of the source database that no session of the target could start under (a
/// preload library the target server lacks, for the very role the copy connects as): the
/// target database would lock everyone out, so the settings are taken back, with a warning.
#[test]
fn settings_that_would_lock_the_target_out_are_taken_back() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    // The role never connects to the source's database; on the target it runs the copy.
    src.psql(
        "postgres",
        "CREATE ROLE migrator; \
         ALTER ROLE migrator IN DATABASE app SET session_preload_libraries = 'seren_no_such_library'; \
         ALTER DATABASE app SET work_mem = '8MB'",
    );
    dst.psql("postgres", "CREATE ROLE migrator SUPERUSER LOGIN");
    let mut opts = options(&src, "app", &dst, "copy");
    opts.target.user = "migrator".into();
    let (result, events) = run_init(opts);
    result.expect("init");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, replicator_core::Event::Warning(w)
            if w.contains("taken back") && w.contains("seren_no_such_library"))),
        "{events:?}"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = 'copy'"
        ),
        "0",
        "no setting is left that locks sessions out"
    );
    assert_eq!(dst.psql("copy", "SELECT count(*) FROM t"), "1");
}

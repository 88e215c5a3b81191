//! The compatibility matrix: a source of one PostgreSQL major into a target of the same or a
//! newer one, as a major-version upgrade runs it. Each cell loads the awkward-case schema of the
//! engine's fidelity tests into the source, runs `validate` (every check passes or warns),
//! `init` with replication, writes on the source
//! (inserts, updates and deletes on identity, generated, partitioned and inherited tables),
//! checks that `verify` finds every table equal after catch-up and that every table's rows hash
//! equal, then runs `cutover` and checks that sequences and large objects arrived and nothing of
//! ours is left on either server.
//!
//! The normal run covers three cells (`SEREN_MATRIX` unset):
//! - 12 → 18: the oldest source into the newest target, the largest jump; a source before 15
//!   needs the keyword form of `CREATE_REPLICATION_SLOT`.
//! - 14 → 15: an older source into the system's own major, restored by the newest `pg_dump`
//!   (18), whose output must load into an older server than itself.
//! - 18 → 18: the newest server on both sides.
//!
//! `SEREN_MATRIX=all` runs every cell from [`pg_harness::majors`] (each source into every
//! target of the same or a newer major), `SEREN_MATRIX=12:18,15:17` the cells named;
//! `SEREN_MATRIX_REPORT=path` appends one Markdown table row per cell to `path`.
//! `scripts/compat-matrix.sh` runs the whole matrix and prints the table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

mod common;

use common::{assert_nothing_made, text};
use pg_harness::{client_bindir, majors, server_bindir, Cluster, Options};

/// Run the CLI with the newest client tools (18), whatever the two servers.
fn run(source: &str, target: &str, args: &[&str]) -> Output {
    common::run_with(&client_bindir(), source, target, args)
}

/// Load the engine's awkward-case schema into `db`: `awkward.sql`, and on 15 and later
/// `awkward-15.sql` with what older servers cannot hold (numeric infinities, NULLS NOT DISTINCT).
fn load_awkward(c: &Cluster, db: &str, major: u32) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../replicator-core/tests/fixtures");
    c.psql_file(db, &fixtures.join("awkward.sql"));
    if major >= 15 {
        c.psql_file(db, &fixtures.join("awkward-15.sql"));
    }
}

/// Writes after the copy, carried by replication alone.
const WRITES: &str = r#"
INSERT INTO "Sales Dept"."Order Items" ("Qty", price, tags, attrs, email, feeling)
  SELECT g % 5 + 1, g * 2.5, ARRAY['late' || g], hstore('late', g::text), 'Late' || g || '@Example.com', 'ok'
  FROM generate_series(1, 50) g;
UPDATE "Sales Dept"."Order Items" SET price = price + 1 WHERE "ID" % 10 = 0;
DELETE FROM "Sales Dept"."Order Items" WHERE "ID" % 97 = 0;
INSERT INTO by_default (note) VALUES ('late');
UPDATE odd_values SET t = 'changed', f = 'NaN', d = '1999-12-31' WHERE id = 3;
INSERT INTO odd_values (f, n, ts, d, t, j) VALUES (1e-300, 1.5, '2024-02-29 12:00:00+05', '2024-02-29', 'late', '{"late": true}');
DELETE FROM events WHERE id % 10 = 0;
UPDATE events SET body = 'moved ' || id WHERE id % 10 = 1;
INSERT INTO events SELECT g, (ARRAY['eu','us','apac'])[g % 3 + 1], DATE '2023-03-01' + (g % 400), 'late ' || g
  FROM generate_series(5001, 5300) g;
UPDATE animals SET name = 'renamed' WHERE id = 1;
UPDATE wide SET b = b + 1 WHERE id % 100 = 0;
DELETE FROM wide WHERE id % 1000 = 7;
INSERT INTO small_7 VALUES (100, 'late');
UPDATE big_values SET payload = repeat('z', 3000000) WHERE id = 2;
SELECT nextval('used_seq') FROM generate_series(1, 5);
"#;

/// Per table: its row count and a hash of its rows' text, sorted; rendered with the settings
/// pinned so that the two servers' defaults do not matter.
fn contents(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET extra_float_digits = 3; \
         CREATE TEMP TABLE hashes (t text, n bigint, h text); \
         DO $$ DECLARE r record; n bigint; h text; BEGIN \
           FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
                    WHERE c.relkind = 'r' AND s.nspname NOT IN ('pg_catalog', 'information_schema', '_seren_replicator') \
                      AND s.nspname NOT LIKE 'pg_toast%' LOOP \
             EXECUTE format('SELECT count(*), md5(coalesce(string_agg(x::text, E''\\n'' ORDER BY x::text), '''')) FROM ONLY %s x', r.rel) INTO n, h; \
             INSERT INTO hashes VALUES (r.rel::text, n, h); \
           END LOOP; END $$; \
         SELECT string_agg(t || ' ' || n || ' ' || h, E'\\n' ORDER BY t) FROM hashes;",
    )
}

/// What the restore made, in a form that does not change between majors: indexes, constraints
/// other than the NOT NULL ones that PostgreSQL 18 records in pg_constraint, triggers, policies,
/// and who besides its owner may do what in the schema public (its default owner differs
/// between majors).
fn objects(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SELECT string_agg(d, E'\\n' ORDER BY d) FROM ( \
           SELECT 'index ' || indexrelid::regclass || ' ' || pg_get_indexdef(indexrelid) AS d FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace s ON s.oid = c.relnamespace \
             WHERE s.nspname NOT IN ('pg_catalog', 'information_schema', '_seren_replicator') AND s.nspname NOT LIKE 'pg_toast%' \
           UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE contype <> 'n' AND connamespace NOT IN \
               (SELECT oid FROM pg_namespace WHERE nspname IN ('pg_catalog', 'information_schema', '_seren_replicator')) \
           UNION ALL SELECT 'trigger ' || tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal \
           UNION ALL SELECT 'policy ' || polrelid::regclass || ' ' || polname FROM pg_policy \
           UNION ALL SELECT 'matview ' || oid::regclass FROM pg_class WHERE relkind = 'm' \
           UNION ALL SELECT 'extension ' || extname FROM pg_extension \
           UNION ALL SELECT 'schema public: ' || coalesce((SELECT string_agg(g, ', ' ORDER BY g) FROM ( \
               SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || ' ' \
                      || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END AS g \
               FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a \
               WHERE n.nspname = 'public' AND a.grantee <> n.nspowner) p), 'none')) x",
    )
}

fn sequences(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SELECT string_agg(schemaname || '.' || sequencename || ' ' || coalesce(last_value::text, 'unused'), E'\\n' \
                           ORDER BY schemaname, sequencename) FROM pg_sequences",
    )
}

fn large_objects(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SELECT string_agg(oid || ' ' || md5(lo_get(oid)), E'\\n' ORDER BY oid) FROM pg_largeobject_metadata",
    )
}

/// One cell; `Err` with what went wrong.
fn cell(source_major: u32, target_major: u32) -> Result<String, String> {
    let started = Instant::now();
    let src = Cluster::start(&Options {
        server_bindir: Some(server_bindir(source_major)),
        ..Options::source()
    });
    let dst = Cluster::start(&Options {
        server_bindir: Some(server_bindir(target_major)),
        ..Options::target()
    });
    src.create_db("app");
    // Decoding spills or streams transactions over 64 kB (the setting exists from 13, streaming
    // from 14); into 18, whose subscriptions stream in parallel by default, a 16+ source's are
    // applied by parallel apply workers beside the leader.
    if source_major >= 13 {
        src.psql(
            "postgres",
            "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'",
        );
        src.psql("postgres", "SELECT pg_reload_conf()");
    }
    load_awkward(&src, "app", source_major);
    // Privileges on functions of pg_catalog, as backup and monitoring roles get them: one every
    // major has, and before 15 one that 15 renamed (pg_start_backup, now pg_backup_start).
    src.psql(
        "app",
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text) TO reader_role_for_test; \
         DO $$BEGIN \
           IF to_regprocedure('pg_catalog.pg_start_backup(text, boolean, boolean)') IS NOT NULL THEN \
             EXECUTE 'GRANT EXECUTE ON FUNCTION pg_catalog.pg_start_backup(text, boolean, boolean) \
                      TO reader_role_for_test'; \
           END IF; \
         END$$",
    );
    src.psql("app", "CREATE ROLE app LOGIN");
    dst.psql(
        "postgres",
        "CREATE ROLE reader_role_for_test NOLOGIN; CREATE ROLE app LOGIN",
    );
    let (s, t) = (src.url("app"), dst.url("app"));
    let check = |what: &str, out: &Output| {
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed: {}", text(out).trim()))
        }
    };

    // The checks pass (or only warn) on every pair: each reads catalogs and settings that
    // differ between majors (validate once panicked on a 12 source's missing setting).
    check("validate", &run(&s, &t, &["validate"]))?;
    // Replication on by default; the two tables without a key are copied and left out of it.
    let out = run(&s, &t, &["init", "--progress", "none"]);
    check("init", &out)?;
    let init = text(&out);
    if !(init.contains("copied but not replicated") && init.contains("public.dogs")) {
        return Err(format!("init did not warn about public.dogs: {init}"));
    }
    if dst.psql("app", "SELECT count(*) FROM pg_subscription") != "1" {
        return Err(format!("init made no subscription: {init}"));
    }
    let may = |c: &Cluster, f: &str| {
        c.psql(
            "app",
            &format!(
                "SELECT coalesce(has_function_privilege('reader_role_for_test', \
                 to_regprocedure('pg_catalog.{f}'), 'EXECUTE'), false)"
            ),
        )
    };
    if may(&dst, "pg_ls_dir(text)") != "t" {
        return Err("the GRANT on pg_catalog.pg_ls_dir(text) did not arrive".into());
    }
    let start_backup = "pg_start_backup(text, boolean, boolean)";
    if source_major < 15 && target_major >= 15 {
        if !(init.contains("pg_start_backup") && init.contains("is left out")) {
            return Err(format!("init did not name the GRANT it left out: {init}"));
        }
    } else if may(&dst, start_backup) != may(&src, start_backup) {
        return Err(format!(
            "the GRANT on pg_catalog.{start_backup} did not arrive"
        ));
    }
    let copied = objects(&src, "app") == objects(&dst, "app");
    if !copied {
        return Err(format!(
            "objects differ:\nsource:\n{}\ntarget:\n{}",
            objects(&src, "app"),
            objects(&dst, "app")
        ));
    }
    if large_objects(&src, "app") != large_objects(&dst, "app") {
        return Err("large objects differ".into());
    }

    src.psql("app", WRITES);
    let out = run(&s, &t, &["verify"]);
    check("verify after the writes", &out)?;
    // status reads catalog columns that differ between majors (wal_status from 13, parallel
    // apply workers from 16).
    check("status", &run(&s, &t, &["status"]))?;
    let verified = text(&out);
    if !verified.contains("tables equal") {
        return Err(format!("verify did not say equal: {verified}"));
    }
    let (a, b) = (contents(&src, "app"), contents(&dst, "app"));
    if a != b {
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .take(5)
            .map(|(x, y)| format!("source {x} / target {y}"))
            .collect();
        return Err(format!("rows differ: {}", diff.join("; ")));
    }

    let out = run(&s, &t, &["cutover", "--role", "app"]);
    check("cutover", &out)?;
    if sequences(&src, "app") != sequences(&dst, "app") {
        return Err(format!(
            "sequences differ: {} / {}",
            sequences(&src, "app"),
            sequences(&dst, "app")
        ));
    }
    let left = (
        src.psql("app", "SELECT count(*) FROM pg_replication_slots"),
        src.psql("app", "SELECT count(*) FROM pg_publication"),
        dst.psql("app", "SELECT count(*) FROM pg_subscription"),
    );
    if left != ("0".into(), "0".into(), "0".into()) {
        return Err(format!(
            "left after cutover (slots, publications, subscriptions): {left:?}"
        ));
    }
    let tables = a.lines().count();
    Ok(format!(
        "{tables} tables equal after writes, cutover clean, {:.0} s",
        started.elapsed().as_secs_f64()
    ))
}

fn cells() -> Vec<(u32, u32)> {
    match std::env::var("SEREN_MATRIX").ok().as_deref() {
        None | Some("") => vec![(12, 18), (14, 15), (18, 18)],
        Some("all") => {
            let all = majors();
            all.iter()
                .flat_map(|&s| all.iter().filter(move |&&t| t >= s).map(move |&t| (s, t)))
                .collect()
        }
        Some(list) => list
            .split(',')
            .map(|c| {
                let (s, t) = c
                    .split_once(':')
                    .expect("SEREN_MATRIX cells look like 12:18");
                (
                    s.trim().parse().expect("a source major"),
                    t.trim().parse().expect("a target major"),
                )
            })
            .collect(),
    }
}

#[test]
fn every_source_major_replicates_exactly_into_the_same_or_a_newer_target() {
    let report = std::env::var_os("SEREN_MATRIX_REPORT").map(PathBuf::from);
    let mut failures = Vec::new();
    for (s, t) in cells() {
        let outcome = std::panic::catch_unwind(|| cell(s, t))
            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&p))));
        let line = match &outcome {
            Ok(how) => format!("| {s} | {t} | exact | {how} |"),
            Err(why) => {
                failures.push(format!("{s} → {t}: {why}"));
                // The line that says why: the CLI's `error:` line when there is one.
                let first = why
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("error:"))
                    .or_else(|| why.lines().next())
                    .unwrap_or_default()
                    .replace('|', "\\|");
                format!("| {s} | {t} | FAILED | {first} |")
            }
        };
        eprintln!("{line}");
        if let Some(path) = &report {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the report");
            writeln!(f, "{line}").expect("write the report");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".into())
}

#[test]
fn a_target_older_than_the_source_is_refused_before_anything_is_made() {
    let src = Cluster::start(&Options {
        server_bindir: Some(server_bindir(18)),
        ..Options::source()
    });
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql("app", "CREATE TABLE t (id int PRIMARY KEY)");
    let out = run(&src.url("app"), &dst.url("app"), &["init", "--sync"]);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("older than the source"), "{all}");
    assert_nothing_made(&src, &dst, "app");
}

/// A source database sorting with ICU into a server whose ICU is another version (Debian's
/// PostgreSQL 15 links the system's ICU; zonky's 17 bundles its own): `validate` and `init`
/// name the difference and what it can change, the target database is created with the
/// source's provider and ICU locale, and the copy still verifies equal.
#[test]
fn another_icu_version_on_the_target_is_named_and_the_copy_still_verifies() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options {
        server_bindir: Some(server_bindir(17)),
        ..Options::target()
    });
    src.psql(
        "postgres",
        "CREATE DATABASE app TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'",
    );
    src.psql(
        "app",
        "CREATE TABLE words (w text PRIMARY KEY); \
         INSERT INTO words SELECT CASE WHEN g % 2 = 0 THEN upper(md5(g::text)) ELSE md5(g::text) END \
         FROM generate_series(1, 500) g;",
    );
    let versions = |c: &Cluster| {
        c.psql(
            "postgres",
            "SELECT pg_collation_actual_version(oid) FROM pg_collation WHERE collname = 'und-x-icu'",
        )
    };
    assert_ne!(
        versions(&src),
        versions(&dst),
        "the two ICU versions differ"
    );
    let (s, t) = (src.url("app"), dst.url("app"));
    let out = run(&s, &t, &["validate"]);
    let line = text(&out)
        .lines()
        .find(|l| l.contains("target.collation"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("a collation line: {}", text(&out)));
    assert!(
        line.starts_with("warn") && line.contains("ICU collation version"),
        "{line}"
    );
    let out = run(&s, &t, &["init", "--no-sync", "--progress", "none"]);
    let all = text(&out);
    assert!(out.status.success(), "init: {all}");
    assert!(all.contains("warning: text in en-US sorts by ICU"), "{all}");
    // The target database sorts with the source's provider and locale, not libc's "C".
    let sorting = "SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') || ' ' \
                   || coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale', '') \
                   FROM pg_database d WHERE datname = 'app'";
    assert_eq!(dst.psql("postgres", sorting), "i en-US");
    let ordered = "SELECT md5(string_agg(w, ',' ORDER BY w)) FROM words";
    assert_eq!(
        dst.psql("app", ordered),
        src.psql("app", ordered),
        "ORDER BY on text returns the rows in the source's order"
    );
    let out = run(&s, &t, &["verify", "--chunk-rows", "50"]);
    assert!(out.status.success(), "verify: {}", text(&out));
}

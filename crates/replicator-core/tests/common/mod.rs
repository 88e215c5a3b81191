//! Helpers for engine tests: run `init` in-process and compare source and target the way a
//! user would check them (schema dump, row contents, sequences, large objects).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use pg_harness::{bindir, Cluster};
use replicator_core::progress::Event;
use replicator_core::{ConnUrl, InitOptions, InitReport, Observer};

pub fn url(c: &Cluster, db: &str) -> ConnUrl {
    ConnUrl::parse_with_env(&c.url(db), &|_| None).expect("harness URL parses")
}

pub fn options(src: &Cluster, src_db: &str, dst: &Cluster, dst_db: &str) -> InitOptions {
    let mut o = InitOptions::new(url(src, src_db), url(dst, dst_db));
    o.jobs = 2;
    o.pg_bindir = Some(bindir());
    o
}

/// Run `init` on a fresh runtime (as the CLI does), collecting its events.
pub fn run_init(opts: InitOptions) -> (replicator_core::Result<InitReport>, Vec<Event>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let observer: Observer =
        Arc::new(move |e: &Event| sink.lock().expect("events").push(e.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(replicator_core::init(opts, observer));
    let events = events.lock().expect("events").clone();
    (result, events)
}

/// `pg_dump --schema-only` with the lines that legitimately differ removed.
pub fn schema_dump(c: &Cluster, db: &str) -> String {
    let out = Command::new(bindir().join("pg_dump"))
        .args(["--schema-only", "-h"])
        .arg(c.socket_dir())
        .args(["-p", &c.port().to_string(), "-U", "postgres", "-d", db])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")
        })
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every user table's row count and a hash of its sorted rows (`FROM ONLY`, so inherited rows
/// count once, in their own table).
pub fn table_contents(c: &Cluster, db: &str) -> BTreeMap<String, String> {
    let tables = c.psql(
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) || ' ' || c.relispopulated
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r','m') AND n.nspname NOT IN ('pg_catalog','information_schema')
           AND n.nspname !~ '^pg_toast' ORDER BY 1",
    );
    tables
        .lines()
        .map(|line| {
            let (t, populated) = line.rsplit_once(' ').expect("name and flag");
            if populated == "false" {
                return (t.to_owned(), "not populated".to_owned());
            }
            let v = c.psql(
                db,
                &format!(
                    "SELECT count(*) || ' ' || coalesce(md5(string_agg(x.r, E'\\n' ORDER BY x.r)), '-')
                     FROM (SELECT t::text AS r FROM ONLY {t} t) x"
                ),
            );
            (t.to_owned(), v)
        })
        .collect()
}

/// Every sequence's (last_value, is_called), read from the sequences themselves.
pub fn sequence_values(c: &Cluster, db: &str) -> BTreeMap<String, String> {
    let names = c.psql(
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'S' ORDER BY 1",
    );
    names
        .lines()
        .map(|s| {
            (
                s.to_owned(),
                c.psql(
                    db,
                    &format!("SELECT last_value || '/' || is_called FROM {s}"),
                ),
            )
        })
        .collect()
}

pub fn large_objects(c: &Cluster, db: &str) -> String {
    c.psql(db, "SELECT coalesce(string_agg(oid || ':' || md5(lo_get(oid)), ',' ORDER BY oid), '') FROM pg_largeobject_metadata")
}

/// Assert the target equals the source in schema, rows, sequences and large objects.
pub fn assert_same(src: &Cluster, src_db: &str, dst: &Cluster, dst_db: &str) {
    let (a, b) = (schema_dump(src, src_db), schema_dump(dst, dst_db));
    if a != b {
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .take(10)
            .map(|(x, y)| format!("- {x}\n+ {y}"))
            .collect();
        panic!(
            "schemas differ ({} vs {} lines):\n{}",
            a.lines().count(),
            b.lines().count(),
            diff.join("\n")
        );
    }
    assert_eq!(
        table_contents(src, src_db),
        table_contents(dst, dst_db),
        "table contents differ"
    );
    assert_eq!(
        sequence_values(src, src_db),
        sequence_values(dst, dst_db),
        "sequence values differ"
    );
    assert_eq!(
        large_objects(src, src_db),
        large_objects(dst, dst_db),
        "large objects differ"
    );
}

/// Load the awkward-case schema (`fixtures/awkward.sql`, and `fixtures/awkward-15.sql` for what
/// needs PostgreSQL 15) into `db`.
pub fn load_awkward(c: &Cluster, db: &str) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    c.psql_file(db, &fixtures.join("awkward.sql"));
    c.psql_file(db, &fixtures.join("awkward-15.sql"));
}

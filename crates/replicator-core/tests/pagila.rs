//! Fidelity on a real sample database: after `init`, the target holds pagila exactly.

mod common;

use common::*;
use pg_harness::{datasets_dir, Cluster, Options};

#[test]
fn pagila_is_copied_exactly() {
    let Some(datasets) = datasets_dir() else {
        panic!("pagila not found: set SEREN_DATASETS to the folder holding pagila/");
    };
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("pagila");
    src.psql_file("pagila", &datasets.join("pagila/pagila-schema.sql"));
    src.psql_file("pagila", &datasets.join("pagila/pagila-data.sql"));
    // A large object too, so that path is exercised on real data.
    src.psql(
        "pagila",
        "SELECT lo_from_bytea(424242, convert_to(repeat('pagila ', 100000), 'UTF8'))",
    );

    let (result, events) = run_init(options(&src, "pagila", &dst, "pagila_copy"));
    let report = result.expect("init succeeds");
    assert_same(&src, "pagila", &dst, "pagila_copy");
    assert!(report.tables >= 20, "{report:?}");
    let rows_in_target: u64 = table_contents(&dst, "pagila_copy")
        .values()
        .filter_map(|v| v.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        report.rows, rows_in_target,
        "reported rows = rows in the target"
    );
    assert_eq!(report.large_objects, 1);
    assert_eq!(
        dst.psql(
            "pagila_copy",
            "SELECT count(*) FROM pg_namespace WHERE nspname = '_seren_replicator'"
        ),
        "0",
        "bookkeeping removed"
    );
    // Statistics exist: ANALYZE ran.
    assert_ne!(
        dst.psql(
            "pagila_copy",
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = 'rental'"
        ),
        "0"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, replicator_core::Event::Planned(_))));
    assert!(
        !dst.log().contains("duplicate key"),
        "no duplicate keys in the target's log"
    );
}

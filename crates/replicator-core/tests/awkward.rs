//! Fidelity on a schema built to hold every awkward case: generated and identity columns,
//! several partition levels with defaults, inheritance, unlogged tables, a deferrable FK cycle,
//! a row-rewriting trigger, dropped columns, NaN/Infinity, multi-megabyte TOAST values, quoted
//! mixed-case names, hundreds of small tables, extensions, materialized views, RLS, large
//! objects, and a table split into ctid ranges.

mod common;

use std::path::Path;

use common::*;
use pg_harness::{Cluster, Options};
use replicator_core::Event;

fn awkward_source() -> Cluster {
    let src = Cluster::start(&Options::source());
    src.create_db("awkward");
    src.psql_file(
        "awkward",
        &Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("tests/fixtures/awkward.sql"),
    );
    src
}

#[test]
fn every_awkward_case_is_copied_exactly() {
    let src = awkward_source();
    let dst = Cluster::start(&Options::target());
    // Roles are global objects, outside any database dump.
    dst.psql("postgres", "CREATE ROLE reader_role_for_test NOLOGIN");
    let mut opts = options(&src, "awkward", &dst, "copy");
    opts.split.larger_than = 1 << 20; // split `wide` (~10 MB) into ranges
    opts.jobs = 3;
    let (result, events) = run_init(opts);
    let report = result.expect("init succeeds");
    assert_same(&src, "awkward", &dst, "copy");

    assert!(
        report.units_total > report.tables,
        "wide was split: {report:?}"
    );
    assert_eq!(report.large_objects, 3);
    // The trigger exists on the target but did not rewrite the loaded rows.
    assert_eq!(
        dst.psql("copy", "SELECT note FROM audited ORDER BY id"),
        "original\nkept"
    );
    assert_eq!(
        dst.psql(
            "copy",
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'audited_rewrite'"
        ),
        "1"
    );
    // Identity columns continue where the source's would.
    assert_eq!(
        dst.psql(
            "copy",
            "INSERT INTO by_default (note) VALUES ('next') RETURNING id"
        ),
        src.psql(
            "awkward",
            "INSERT INTO by_default (note) VALUES ('next') RETURNING id"
        )
    );
    // The materialized view was refreshed from the copied rows.
    assert_eq!(dst.psql("copy", "SELECT sum(n) FROM order_summary"), "2000");
    let phases: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseFinished(p, _) => Some(p.name()),
            _ => None,
        })
        .collect();
    assert_eq!(
        phases,
        [
            "preflight",
            "snapshot",
            "pre-data",
            "data",
            "post-data",
            "sequences+large objects",
            "analyze"
        ]
    );
}

#[test]
fn filters_select_tables_rows_and_schema_only() {
    let src = awkward_source();
    let dst = Cluster::start(&Options::target());
    let mut opts = options(&src, "awkward", &dst, "subset");
    opts.no_privileges = true;
    opts.filter = replicator_core::Filter::from_args(
        &[],
        &["public.small_*".into(), "happy_orders".into()],
        &["public.wide".into()],
        &[r#""Sales Dept"."Order Items":"Qty" > 3"#.into()],
    )
    .expect("valid filters");
    run_init(opts).0.expect("init succeeds");
    assert_eq!(
        dst.psql(
            "subset",
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'small\\_%'"
        ),
        "0"
    );
    assert_eq!(
        dst.psql(
            "subset",
            "SELECT count(*) FROM pg_views WHERE viewname = 'happy_orders'"
        ),
        "0"
    );
    assert_eq!(
        dst.psql("subset", "SELECT count(*) FROM wide"),
        "0",
        "schema only"
    );
    assert_eq!(
        dst.psql(
            "subset",
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'wide'"
        ),
        "1"
    );
    assert_eq!(
        dst.psql(
            "subset",
            r#"SELECT count(*) FROM "Sales Dept"."Order Items""#
        ),
        src.psql(
            "awkward",
            r#"SELECT count(*) FROM "Sales Dept"."Order Items" WHERE "Qty" > 3"#
        )
    );
    assert_eq!(
        table_contents(&dst, "subset").get("public.events"),
        table_contents(&src, "awkward").get("public.events")
    );
}

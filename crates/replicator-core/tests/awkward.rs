//! Fidelity on a schema built to hold every awkward case: generated and identity columns,
//! several partition levels with defaults, inheritance, unlogged tables, a deferrable FK cycle,
//! a row-rewriting trigger, dropped columns, NaN/Infinity, multi-megabyte TOAST values, quoted
//! mixed-case names, hundreds of small tables, extensions, materialized views, RLS, large
//! objects, and a table split into ctid ranges.

mod common;

use common::*;
use pg_harness::{Cluster, Options};
use replicator_core::plan::SplitSize;
use replicator_core::Event;

fn awkward_source() -> Cluster {
    let src = Cluster::start(&Options::source());
    src.create_db("awkward");
    load_awkward(&src, "awkward");
    src
}

#[test]
fn every_awkward_case_is_copied_exactly() {
    let src = awkward_source();
    let dst = Cluster::start(&Options::target());
    // Roles are global objects, outside any database dump.
    dst.psql("postgres", "CREATE ROLE reader_role_for_test NOLOGIN");
    let mut opts = options(&src, "awkward", &dst, "copy");
    opts.split.size = SplitSize::LargerThan(1 << 20); // split `wide` (~10 MB) into ranges
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
    // Keys beside other indexes were built as indexes and attached: not the NULLS NOT DISTINCT
    // or deferrable ones (a column's own collation, "C" on `label`, is what an index gets anyway).
    let separable = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let client = replicator_core::connect::connect(
                &common::url(&src, "awkward"),
                replicator_core::Side::Source,
            )
            .await
            .expect("connect");
            replicator_core::catalog::read(&client)
                .await
                .expect("catalog")
                .separable_constraints
        });
    let mut names: Vec<&str> = separable
        .keys()
        .filter(|(schema, tag)| schema == "public" && tag.starts_with("keyed "))
        .map(|(_, tag)| tag.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["keyed Keyed Code", "keyed keyed_label_uq", "keyed keyed_pk"]
    );
    let pk = &separable[&("public".to_owned(), "keyed keyed_pk".to_owned())];
    assert_eq!(
        pk.index_sql,
        "CREATE UNIQUE INDEX keyed_pk ON public.keyed USING btree (id) INCLUDE (note) WITH (fillfactor=70);"
    );
    assert_eq!(
        dst.psql(
            "copy",
            "SELECT string_agg(conname || ':' || contype::text || ':' || pg_get_constraintdef(oid), ' | ' ORDER BY conname) \
             FROM pg_constraint WHERE conrelid = 'keyed'::regclass"
        ),
        src.psql(
            "awkward",
            "SELECT string_agg(conname || ':' || contype::text || ':' || pg_get_constraintdef(oid), ' | ' ORDER BY conname) \
             FROM pg_constraint WHERE conrelid = 'keyed'::regclass"
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

//! The copy under faults, each injected at a chosen point by the harness's proxy (or by
//! restarting a server), and each checked by comparing rows, not counts:
//!
//! - a lost reply to the COMMIT of a block-range unit of a table without a primary key: the
//!   retry finds the unit committed and copies nothing again (before: the range twice);
//! - a lost reply to the COMMIT of a post-data item: applied once (before: "already exists");
//! - the source's connection cut mid-COPY: retried under the same snapshot, so rows changed
//!   after it do not leak in;
//! - the target server restarted mid-copy: every pair reconnects and the copy is exact;
//! - `--resume` after rows moved between blocks: a split table whose ranges did not all finish
//!   is copied again whole (before: rows twice or not at all), and a resume against another
//!   source is refused.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use pg_harness::proxy::{Action, Fault, Proxy, Trigger};
use pg_harness::{Cluster, Options};
use replicator_core::plan::{SplitPolicy, SplitSize};
use replicator_core::{Error, Event, InitOptions, Observer};

/// A source with a table of ~8 MB and no primary key (a duplicate would go unnoticed by any
/// constraint), an index on it, and a few small tables.
fn source() -> Cluster {
    let src = Cluster::start(&Options::source());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE big (id int, pad text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 60000) g;
         CREATE INDEX big_id ON big (id);
         CREATE TABLE small (id int PRIMARY KEY, v text);
         INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         CREATE TABLE other (id int PRIMARY KEY, at timestamptz DEFAULT now());
         INSERT INTO other (id) SELECT generate_series(1, 500);",
    );
    src
}

/// Split `big` into 8 ranges of ~1 MB.
fn split(opts: &mut InitOptions) {
    opts.split = SplitPolicy {
        size: SplitSize::LargerThan(1 << 20),
        max_parts: 8,
        tid_range_scan: true,
    };
}

fn through(proxy: &Proxy, mut url: replicator_core::ConnUrl) -> replicator_core::ConnUrl {
    url.port = proxy.port();
    url
}

fn retried(events: &[Event], what: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Retrying { what: w, .. } if w.contains(what)))
}

fn big_rows(c: &Cluster, db: &str) -> String {
    c.psql(db, "SELECT count(*) || '/' || count(DISTINCT id) FROM big")
}

#[test]
fn a_lost_commit_reply_on_a_range_unit_copies_the_range_once() {
    let src = source();
    let dst = Cluster::start(&Options::target());
    let proxy = Proxy::start(dst.port());
    // The unit's last statements: its record and COMMIT.
    proxy.arm(Fault::once(
        Trigger::Query(vec!["'public.big#2'".into(), "COMMIT".into()]),
        Action::LoseReply,
    ));
    let mut opts = options(&src, "app", &dst, "copy");
    opts.target = through(&proxy, opts.target);
    split(&mut opts);
    let (result, events) = run_init(opts);
    let report = result.expect("the copy survives a lost COMMIT reply");
    assert_eq!(proxy.fired(), 1, "the fault was injected");
    assert!(retried(&events, "public.big#2"), "the unit was tried again");
    assert!(report.units_total >= 8, "big was split: {report:?}");
    assert_eq!(big_rows(&dst, "copy"), "60000/60000");
    assert_same(&src, "app", &dst, "copy");
}

#[test]
fn a_lost_commit_reply_on_a_post_data_item_applies_it_once() {
    let src = source();
    let dst = Cluster::start(&Options::target());
    let proxy = Proxy::start(dst.port());
    // The statement that builds the index and commits it.
    proxy.arm(Fault::once(
        Trigger::Query(vec!["CREATE INDEX big_id".into(), "COMMIT".into()]),
        Action::LoseReply,
    ));
    let mut opts = options(&src, "app", &dst, "copy");
    opts.target = through(&proxy, opts.target);
    let (result, events) = run_init(opts);
    result.expect("the copy survives a lost COMMIT reply on an index");
    assert_eq!(proxy.fired(), 1, "the fault was injected");
    assert!(
        retried(&events, "big_id"),
        "the index build was tried again"
    );
    assert_eq!(
        dst.psql(
            "copy",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_id'"
        ),
        "1"
    );
    assert_same(&src, "app", &dst, "copy");
}

#[test]
fn a_source_connection_cut_mid_copy_is_retried_under_the_same_snapshot() {
    let src = source();
    let dst = Cluster::start(&Options::target());
    let proxy = Proxy::start(src.port());
    proxy.arm(Fault::once(Trigger::ServerCopyBytes(1 << 20), Action::Cut));
    let before = table_contents(&src, "app");
    // Once the cut is seen, change the source: the retry must not see it.
    let changer = src.psql_command("app");
    let changer = Arc::new(Mutex::new(Some(changer)));
    let observer_changer = changer.clone();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let observer: Observer = Arc::new(move |e: &Event| {
        if matches!(e, Event::Retrying { .. }) {
            if let Some(mut cmd) = observer_changer.lock().expect("changer").take() {
                let out = cmd
                    .args([
                        "-c",
                        "UPDATE big SET pad = 'changed' WHERE id % 7 = 0; \
                         INSERT INTO small VALUES (100000, 'late'); DELETE FROM other WHERE id < 50",
                    ])
                    .output()
                    .expect("change the source");
                assert!(out.status.success(), "{out:?}");
            }
        }
        sink.lock().expect("events").push(e.clone());
    });
    let mut opts = options(&src, "app", &dst, "copy");
    opts.source = through(&proxy, opts.source);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(replicator_core::init(opts, observer))
        .expect("the copy survives a cut source connection");
    assert_eq!(proxy.fired(), 1, "the fault was injected");
    assert!(
        changer.lock().expect("changer").is_none(),
        "the source was changed after the cut"
    );
    let after = table_contents(&src, "app");
    assert_ne!(before, after, "the source changed during the copy");
    assert_eq!(
        table_contents(&dst, "copy"),
        before,
        "the target holds the source as of the snapshot"
    );
}

#[test]
fn a_target_restarted_mid_copy_is_retried_and_exact() {
    let src = source();
    src.psql(
        "app",
        "DO $$ BEGIN FOR i IN 1..40 LOOP
           EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
           EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text) FROM generate_series(1, 3000) g', i);
         END LOOP; END $$",
    );
    let dst = Cluster::start(&Options::target());
    let copied = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = Mutex::new(Some(tx));
    let c = copied.clone();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let observer: Observer = Arc::new(move |e: &Event| {
        if let Event::TableCopied { .. } = e {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == 8 {
                if let Some(tx) = tx.lock().expect("tx").take() {
                    let _ = tx.send(());
                }
            }
        }
        sink.lock().expect("events").push(e.clone());
    });
    let mut opts = options(&src, "app", &dst, "copy");
    opts.retries = 6;
    let result = std::thread::scope(|s| {
        let dst = &dst;
        let restarter = s.spawn(move || {
            if rx.recv().is_ok() {
                dst.restart();
                true
            } else {
                false
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = rt.block_on(replicator_core::init(opts, observer));
        drop(rt);
        (result, restarter.join().expect("restarter"))
    });
    let (result, restarted) = result;
    result.expect("the copy survives a target restart");
    assert!(restarted, "the target was restarted during the copy");
    let events = events.lock().expect("events");
    assert!(
        events.iter().any(|e| matches!(e, Event::Retrying { .. })),
        "work was retried after the restart"
    );
    assert_same(&src, "app", &dst, "copy");
}

#[test]
fn a_resume_after_rows_moved_copies_an_unfinished_split_table_whole_and_refuses_another_source() {
    let src = source();
    let dst = Cluster::start(&Options::target());
    // Run 1: big's fourth range loses its connection at COMMIT and, without retries, the run
    // stops with three ranges of big in the target.
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["'public.big#3'".into(), "COMMIT".into()]),
        Action::Cut,
    ));
    let mut first = options(&src, "app", &dst, "copy");
    first.target = through(&proxy, first.target.clone());
    first.jobs = 1;
    first.retries = 0;
    split(&mut first);
    let (result, _) = run_init(first);
    assert!(result.is_err(), "the first run stops");
    assert_eq!(proxy.fired(), 1);
    let done = dst.psql(
        "copy",
        "SELECT count(*) FILTER (WHERE done) || '/' || count(*) FROM _seren_replicator.units \
         WHERE table_name = 'big'",
    );
    assert_eq!(done, "3/8", "some of big's ranges finished");
    drop(proxy);

    // Rows move between blocks: updated rows get new versions at the table's end, deleted ones
    // leave holes in the finished ranges.
    src.psql(
        "app",
        "UPDATE big SET pad = pad || 'x' WHERE id % 3 = 0; DELETE FROM big WHERE id % 11 = 0;",
    );

    // Another server with the same database is not the source of this copy.
    let stranger = Cluster::start(&Options {
        own_initdb: true,
        ..Options::source()
    });
    stranger.create_db("app");
    stranger.psql("app", "CREATE TABLE big (id int, pad text)");
    let mut wrong = options(&stranger, "app", &dst, "copy");
    wrong.resume = true;
    split(&mut wrong);
    match run_init(wrong).0 {
        Err(Error::Preflight(m)) => {
            assert!(m.starts_with("--resume:") && m.contains("came from"), "{m}")
        }
        other => panic!("a resume from another source must be refused: {other:?}"),
    }

    let mut resume = options(&src, "app", &dst, "copy");
    resume.resume = true;
    split(&mut resume);
    let (result, events) = run_init(resume);
    let report = result.expect("the resume completes");
    assert!(report.resumed);
    assert!(
        events.iter().any(|e| matches!(e, Event::Warning(w)
            if w.contains("public.big again in one piece"))),
        "{events:?}"
    );
    let expected = src.psql(
        "app",
        "SELECT count(*) || '/' || count(DISTINCT id) FROM big",
    );
    assert_eq!(big_rows(&dst, "copy"), expected);
    assert_same(&src, "app", &dst, "copy");
}

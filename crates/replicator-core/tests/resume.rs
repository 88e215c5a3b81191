//! A run interrupted mid-copy (its future dropped, as Ctrl-C or a crash does) leaves only whole
//! units behind; a plain rerun refuses the target, `--resume` finishes it without duplicates or
//! losses, and the bookkeeping is gone afterwards.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use pg_harness::{Cluster, Options};
use replicator_core::{Error, Event, Observer};

#[test]
fn interrupted_run_resumes_without_duplicates_or_losses() {
    let src = Cluster::start(&Options::source());
    src.create_db("awkward");
    load_awkward(&src, "awkward");
    let dst = Cluster::start(&Options::target());
    dst.psql("postgres", "CREATE ROLE reader_role_for_test NOLOGIN");

    // Interrupt after 40 tables are in.
    let copied = Arc::new(AtomicUsize::new(0));
    let trigger = Arc::new(tokio::sync::Notify::new());
    let (c, t) = (copied.clone(), trigger.clone());
    let observer: Observer = Arc::new(move |e: &Event| {
        if let Event::TableCopied { .. } = e {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == 40 {
                t.notify_one();
            }
        }
    });
    let mut opts = options(&src, "awkward", &dst, "copy");
    opts.jobs = 1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let finished = rt.block_on(async {
        let run = tokio::spawn(replicator_core::init(opts.clone(), observer));
        tokio::select! {
            r = run => Some(r),
            _ = trigger.notified() => None,
        }
    });
    assert!(
        finished.is_none(),
        "the run was interrupted before it finished"
    );
    drop(rt); // drops every connection: the server rolls back whatever unit was in flight
    std::thread::sleep(std::time::Duration::from_millis(300));
    let done: i64 = dst
        .psql(
            "copy",
            "SELECT count(*) FROM _seren_replicator.units WHERE done",
        )
        .parse()
        .expect("a count");
    assert!(done >= 40, "finished units are recorded: {done}");

    // A plain rerun refuses; --resume finishes.
    let (refused, _) = run_init(opts.clone());
    match refused {
        Err(Error::TargetNotEmpty(m)) => assert!(m.contains("--resume"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut resume = opts;
    resume.resume = true;
    let (result, events) = run_init(resume);
    let report = result.expect("resume succeeds");
    assert!(report.resumed);
    assert!(
        report.units_run < report.units_total,
        "only the missing units ran: {report:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Warning(w) if w.contains("one moment of the source"))));
    assert_same(&src, "awkward", &dst, "copy");
    assert!(!dst.log().contains("duplicate key"));
}

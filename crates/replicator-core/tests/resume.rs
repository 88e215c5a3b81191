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

/// A run lock still held on the source by a session of a run that is gone (a remote job's
/// worker on an instance that lost power: the server keeps its connection for hours) blocks
/// the next run, which says who holds it; a remote job's next worker (`take_over_lost_run`,
/// the prefix its job's workers name their sessions with) ends that session and goes on, but
/// never one named otherwise (another job's, a local run's).
#[test]
fn a_lost_runs_lock_is_taken_over_only_when_the_run_is_known_gone() {
    let src = Cluster::start(&Options::source());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    );
    let dst = Cluster::start(&Options::target());
    let opts = options(&src, "app", &dst, "copy");
    let names = replicator_core::sync::SyncNames::for_target(&opts.target);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let holder_pid = || -> Option<i32> {
        let out = src.psql(
            "app",
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2",
        );
        out.trim().parse().ok()
    };

    // Held by a session of another job's worker: refused, even when taking over.
    let mut foreign = opts.source.clone();
    foreign.application_name = Some("seren-job/another-job/1".into());
    let held = rt
        .block_on(replicator_core::sync::lock_run(
            &foreign,
            &names,
            &opts.target,
            None,
        ))
        .expect("lock");
    let mut take_over = opts.clone();
    take_over.source.application_name = Some("seren-job/this-job/2".into());
    take_over.target.application_name = Some("seren-job/this-job/2".into());
    take_over.take_over_lost_run = Some("seren-job/this-job/".into());
    let (refused, _) = run_init(take_over.clone());
    match refused {
        Err(Error::RunInProgress(m)) => assert!(m.contains("source session"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(300));

    // Held by this job's lost worker: a plain run is refused, naming the session; the next
    // worker of the job ends it and copies.
    let mut lost = opts.source.clone();
    lost.application_name = Some("seren-job/this-job/1".into());
    let zombie = rt
        .block_on(replicator_core::sync::lock_run(
            &lost,
            &names,
            &opts.target,
            None,
        ))
        .expect("lock");
    let pid = holder_pid().expect("the lock is held");
    let (refused, _) = run_init(opts.clone());
    match refused {
        Err(Error::RunInProgress(m)) => {
            assert!(m.contains(&format!("pg_terminate_backend({pid})")), "{m}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (result, _) = run_init(take_over);
    result.expect("the next worker takes the lock over and copies");
    let alive = src.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
    );
    assert_eq!(alive.trim(), "0", "the lost run's session was ended");
    assert_same(&src, "app", &dst, "copy");
    drop(zombie);
}

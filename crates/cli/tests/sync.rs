//! Replication end to end, as a user runs it: `init` while pgbench writes to the source
//! (inserts, updates, deletes), replication catching up, `verify` finding no difference and the
//! rows hashing equal, `status` showing the lag back at zero after a burst, `verify` naming the
//! range of a row changed behind replication's back, `sync --stop`, and `validate` failing on a
//! source without logical WAL.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{cli, run, text};
use pg_harness::{bindir, Cluster, Options};

const WRITES: &str = "\\set aid random(1, 200000)
\\set bid random(1, 2)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid = :aid;
DELETE FROM pgbench_accounts WHERE aid = :aid + 1;
INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES (:aid + 1000000, :bid, 0, 'new') ON CONFLICT DO NOTHING;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, :bid, :aid, 7, now());
UPDATE pgbench_branches SET bbalance = bbalance + 7 WHERE bid = :bid;
END;
";

fn pgbench(src: &Cluster, script: &std::path::Path, extra: &[&str]) -> Child {
    Command::new(bindir().join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &src.port().to_string(),
            "-U",
            "postgres",
            "-n",
            "-c",
            "2",
        ])
        .args(extra)
        .arg("-f")
        .arg(script)
        .arg("bench")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench")
}

/// An order-independent hash of every row of every pgbench table.
fn content(c: &Cluster) -> String {
    c.psql(
        "bench",
        "SELECT string_agg(h, ' ' ORDER BY h) FROM ( \
           SELECT 'a' || md5(string_agg(t::text, ',' ORDER BY t::text)) AS h FROM pgbench_accounts t \
           UNION ALL SELECT 'b' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM pgbench_branches t \
           UNION ALL SELECT 't' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM pgbench_tellers t \
           UNION ALL SELECT 'h' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM pgbench_history t) x",
    )
}

fn status_json(source: &str, target: &str) -> serde_json::Value {
    let out = run(source, target, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

#[test]
fn init_under_writes_then_replication_verify_status_and_stop() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("bench");
    let init_db = Command::new(bindir().join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &src.port().to_string(),
            "-U",
            "postgres",
            "-i",
            "-s",
            "2",
            "-q",
            "bench",
        ])
        .output()
        .expect("pgbench -i");
    assert!(
        init_db.status.success(),
        "{}",
        String::from_utf8_lossy(&init_db.stderr)
    );
    // pgbench_history has no primary key: --sync refuses it as it is (publishing it would
    // make UPDATE and DELETE on it fail), and replicates it once it has a replica identity.
    src.psql("bench", "ALTER TABLE pgbench_history REPLICA IDENTITY FULL");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("writes.sql");
    std::fs::write(&script, WRITES).expect("script");
    let (s, t) = (src.url("bench"), dst.url("bench"));

    // Writes before, during and after the copy's snapshot.
    let mut bench = pgbench(&src, &script, &["-T", "12"]);
    std::thread::sleep(Duration::from_secs(2));
    let out = run(
        &s,
        &t,
        &["init", "--sync", "--jobs", "2", "--progress", "none"],
    );
    let init_text = text(&out);
    assert!(out.status.success(), "init: {init_text}");
    assert!(init_text.contains("replicating:"), "{init_text}");
    let finished = bench.wait().expect("pgbench");
    assert!(finished.success(), "pgbench failed");
    let s_writes = src.psql("bench", "SELECT count(*) FROM pgbench_history");
    assert_ne!(s_writes, "0", "pgbench wrote during the test");

    // verify waits for replication to catch up, then compares.
    let out = run(&s, &t, &["verify", "--chunk-rows", "50000"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert!(text(&out).contains("all 4 tables equal"), "{}", text(&out));
    assert_eq!(content(&src), content(&dst), "row contents differ");
    assert!(
        !dst.log().contains("duplicate key"),
        "the target's log shows duplicate keys: the copy and replication overlapped"
    );

    // A burst: the lag comes back to zero.
    let burst = pgbench(&src, &script, &["-t", "300"])
        .wait_with_output()
        .expect("burst");
    assert!(burst.status.success());
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let st = status_json(&s, &t);
        let lag = st["slot"]["lag_bytes"].as_i64();
        seen.push(lag);
        assert_eq!(st["subscription"]["enabled"], true, "{st}");
        if lag == Some(0) {
            assert_eq!(st["slot"]["lag_seconds"].as_f64(), Some(0.0), "{st}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lag never returned to zero: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(content(&src), content(&dst), "rows differ after the burst");

    // A row changed behind replication's back is found, with its range.
    let aid = dst.psql(
        "bench",
        "SELECT min(aid) FROM pgbench_accounts WHERE aid >= 150000",
    );
    dst.psql(
        "bench",
        &format!("UPDATE pgbench_accounts SET abalance = abalance + 999 WHERE aid = {aid}"),
    );
    let out = run(&s, &t, &["verify", "--chunk-rows", "50000", "--json"]);
    assert!(!out.status.success(), "verify must fail: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    assert_eq!(report["equal"], false);
    let accounts = report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "public.pgbench_accounts")
        .expect("accounts")
        .clone();
    let mismatches = accounts["mismatches"].as_array().expect("mismatches");
    assert_eq!(mismatches.len(), 1, "{accounts}");
    let aid: i64 = aid.parse().expect("aid");
    let bound = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| a[0].as_str().expect("s").parse::<i64>().expect("n"))
    };
    let after = bound(&mismatches[0]["after"]);
    let up_to = bound(&mismatches[0]["up_to"]);
    assert!(
        after.is_none_or(|a| a < aid) && up_to.is_none_or(|u| aid <= u),
        "{mismatches:?} for aid {aid}"
    );
    assert!(mismatches[0]["description"]
        .as_str()
        .expect("d")
        .contains("contents differ"));
    for other in report["tables"].as_array().expect("tables") {
        if other["table"] != "public.pgbench_accounts" {
            assert_eq!(other["equal"], true, "{other}");
        }
    }

    // Stop: subscription, slot and publication go; status then finds nothing.
    let out = run(&s, &t, &["sync", "--stop"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert!(
        text(&out).contains("dropped subscription"),
        "{}",
        text(&out)
    );
    assert_eq!(
        src.psql("bench", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(
        src.psql("bench", "SELECT count(*) FROM pg_publication"),
        "0"
    );
    assert_eq!(
        dst.psql("bench", "SELECT count(*) FROM pg_subscription"),
        "0"
    );
    let out = run(&s, &t, &["status"]);
    assert!(!out.status.success());
    // No password anywhere in what the user saw.
    assert!(!init_text.contains("password="));
}

#[test]
fn validate_fails_on_a_source_without_logical_wal_and_init_copies_only() {
    let src = Cluster::start(&Options::target()); // wal_level = replica
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
    );
    let (s, t) = (src.url("app"), dst.url("app"));
    let out = run(&s, &t, &["validate"]);
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    let line = all
        .lines()
        .find(|l| l.contains("source.wal_level"))
        .expect("a wal_level line");
    assert!(
        line.starts_with("fail")
            && line.contains("wal_level = replica")
            && line.contains("wal_level = logical"),
        "{line}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("error:") && l.contains("source.wal_level")),
        "{all}"
    );

    // --sync demands it and refuses before anything changes; the default copies with a warning.
    let out = run(&s, &t, &["init", "--sync", "--progress", "none"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("wal_level = replica"), "{}", text(&out));
    assert_eq!(
        dst.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'app'"
        ),
        "0"
    );
    let out = run(&s, &t, &["init", "--progress", "none"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("copying only"), "{}", text(&out));
    assert_eq!(dst.psql("app", "SELECT count(*) FROM t"), "100");
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("compared without replication running"));
}

#[test]
fn cutover_freezes_the_source_copies_sequences_verifies_and_detaches() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    dst.psql("postgres", "CREATE ROLE app LOGIN");
    src.psql(
        "app",
        "CREATE ROLE app LOGIN; \
         CREATE TABLE orders (id serial PRIMARY KEY, note text); \
         GRANT ALL ON orders, orders_id_seq TO app; \
         INSERT INTO orders (note) SELECT 'o' || g FROM generate_series(1, 500) g;",
    );
    let (s, t) = (src.url("app"), dst.url("app"));
    let out = run(&s, &t, &["init", "--sync", "--progress", "none"]);
    assert!(out.status.success(), "init: {}", text(&out));
    // Replacing a replicated target retires its replication: copy-only leaves no slot behind,
    // and a new sync leaves exactly one slot and one subscription.
    let slots = || src.psql("app", "SELECT count(*) FROM pg_replication_slots");
    let again = ["init", "--drop-existing", "--yes", "--progress", "none"];
    let out = run(&s, &t, &[&again[..], &["--no-sync"]].concat());
    assert!(
        out.status.success(),
        "copy over a synced target: {}",
        text(&out)
    );
    assert_eq!(
        (
            slots(),
            dst.psql("app", "SELECT count(*) FROM pg_subscription")
        ),
        ("0".into(), "0".into())
    );
    let out = run(&s, &t, &[&again[..], &["--sync"]].concat());
    assert!(out.status.success(), "sync again: {}", text(&out));
    let out = run(&s, &t, &[&again[..], &["--sync"]].concat());
    assert!(out.status.success(), "and again: {}", text(&out));
    assert_eq!(
        (
            slots(),
            dst.psql("app", "SELECT count(*) FROM pg_subscription")
        ),
        ("1".into(), "1".into())
    );
    // Writes after the copy: rows replicate, the sequence does not.
    src.psql(
        "app",
        "INSERT INTO orders (note) SELECT 'late' FROM generate_series(1, 40)",
    );
    let as_app = |sql: &str| {
        Command::new(bindir().join("psql"))
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &src.port().to_string(),
                "-U",
                "app",
                "-d",
                "app",
                "-c",
                sql,
            ])
            .output()
            .expect("psql as app")
    };

    let out = run(&s, &t, &["cutover", "--role", "app", "--dry-run"]);
    assert!(out.status.success(), "dry run: {}", text(&out));
    assert!(
        text(&out).contains("would make the source read-only for app"),
        "{}",
        text(&out)
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM pg_subscription"), "1");
    assert!(
        as_app("INSERT INTO orders (note) VALUES ('still writable')")
            .status
            .success()
    );

    let out = run(&s, &t, &["cutover", "--role", "nobody"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--role nobody: no such role"),
        "{}",
        text(&out)
    );

    let out = run(&s, &t, &["cutover", "--role", "app"]);
    let all = text(&out);
    assert!(out.status.success(), "cutover: {all}");
    assert!(all.contains("verify: every table equal"), "{all}");
    assert!(all.contains("cutover complete"), "{all}");
    let refused = as_app("INSERT INTO orders (note) VALUES ('after cutover')");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read-only transaction"));
    assert_eq!(
        src.psql("app", "SELECT last_value FROM orders_id_seq"),
        dst.psql("app", "SELECT last_value FROM orders_id_seq"),
        "the sequence was copied"
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM orders"), "541");
    assert_eq!(dst.psql("app", "SELECT count(*) FROM pg_subscription"), "0");
    assert_eq!(
        src.psql("app", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    // The target takes new rows with fresh ids.
    dst.psql("app", "INSERT INTO orders (note) VALUES ('on the target')");
    assert_eq!(
        dst.psql("app", "SELECT count(DISTINCT id) FROM orders"),
        "542"
    );

    let out = run(&s, &t, &["cutover", "--role", "app", "--undo"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(as_app("INSERT INTO orders (note) VALUES ('back')")
        .status
        .success());
}

#[test]
fn a_subscription_that_cannot_start_keeps_the_slot_and_sync_starts_it_later() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
    );
    let (s, t) = (src.url("app"), dst.url("app"));
    // The target is told to reach the source on a port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let unreachable = format!(
        "postgresql://postgres@127.0.0.1:{}/app?sslmode=disable&connect_timeout=2",
        dead.local_addr().expect("addr").port()
    );
    drop(dead);
    let out = cli(&s, &t)
        .args(["init", "--sync", "--progress", "none"])
        .env("SEREN_SYNC_SOURCE_URL", &unreachable)
        .output()
        .expect("init");
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("the copy is complete, but replication did not start"),
        "{all}"
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM t"), "1000");
    assert_eq!(
        src.psql("app", "SELECT count(*) FROM pg_replication_slots"),
        "1"
    );
    // The failed statement carried the connection string: the target's log must not.
    assert!(
        dst.log().contains("could not connect to the publisher"),
        "{}",
        dst.log()
    );
    assert!(!dst.log().contains("CONNECTION 'host="), "{}", dst.log());

    // Changes made meanwhile are kept by the slot and arrive once sync starts the subscription.
    src.psql(
        "app",
        "INSERT INTO t VALUES (1001, 'while waiting'); DELETE FROM t WHERE id = 1",
    );
    let out = run(&s, &t, &["sync"]);
    assert!(out.status.success(), "sync: {}", text(&out));
    assert!(
        text(&out).contains("replicating: subscription"),
        "{}",
        text(&out)
    );
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert_eq!(
        dst.psql("app", "SELECT count(*) FROM t WHERE id = 1001"),
        "1"
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM t WHERE id = 1"), "0");
    let out = run(&s, &t, &["sync"]);
    assert!(
        out.status.success() && text(&out).contains("already replicating"),
        "{}",
        text(&out)
    );
    // Without a slot, sync refuses rather than start with a gap.
    assert!(run(&s, &t, &["sync", "--stop"]).status.success());
    let out = run(&s, &t, &["sync"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot start without a gap"),
        "{}",
        text(&out)
    );
}

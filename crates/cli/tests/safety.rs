//! What a copy must never do to a user's servers, tried as a user meets it (each pins a defect
//! that main once had):
//!
//! - publish a table without a replica identity, after which the application's UPDATE and
//!   DELETE on the source fail;
//! - leave its replication slot (which makes the source keep WAL until the disk fills) after
//!   `kill -9` or SIGTERM;
//! - leave a half-made target after a restore that failed before any row moved, or find a
//!   missing role only then.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{cli, run, text};
use pg_harness::proxy::{Action, Fault, Proxy, Trigger};
use pg_harness::{Cluster, Options};

fn slots(c: &Cluster) -> String {
    c.psql(
        "postgres",
        "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots",
    )
}

fn publications(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SELECT coalesce(string_agg(pubname, ',' ORDER BY pubname), '') FROM pg_publication",
    )
}

fn database_exists(c: &Cluster, db: &str) -> bool {
    c.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) == "1"
}

/// Wait until `cond` holds (or fail after 30 s).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The application's UPDATE and DELETE on `table`, in a transaction rolled back.
fn app_writes(c: &Cluster, db: &str, table: &str) -> Output {
    c.psql_command(db)
        .args([
            "-c",
            &format!("BEGIN; UPDATE {table} SET b = b || '!'; DELETE FROM {table}; ROLLBACK;"),
        ])
        .output()
        .expect("psql")
}

#[test]
fn a_table_without_replica_identity_is_copied_but_never_published() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE nopk (a int, b text); INSERT INTO nopk VALUES (1, 'x'), (2, 'y');
         CREATE TABLE keyed (a int PRIMARY KEY, b text); INSERT INTO keyed VALUES (1, 'x');
         CREATE TABLE keyedkid (c text) INHERITS (keyed); INSERT INTO keyedkid VALUES (7, 'k', 'c');
         CREATE TABLE defpk (a int PRIMARY KEY DEFERRABLE, b text); INSERT INTO defpk VALUES (1, 'x');
         CREATE TABLE jsonfull (a int, b text, j json);
         ALTER TABLE jsonfull REPLICA IDENTITY FULL; INSERT INTO jsonfull VALUES (1, 'x', '{}');",
    );
    let (s, t) = (src.url("app"), dst.url("app"));

    // validate says so before anything changes.
    let out = run(&s, &t, &["validate"]);
    let identity = text(&out)
        .lines()
        .find(|l| l.contains("source.replica_identity"))
        .map(str::to_owned)
        .expect("a replica identity line");
    assert!(
        identity.starts_with("warn")
            && identity.contains("public.nopk")
            && identity.contains("public.jsonfull"),
        "{identity}"
    );

    // --sync refuses before anything is created.
    let out = run(&s, &t, &["init", "--sync", "--progress", "none"]);
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("public.nopk")
            && all.contains("public.jsonfull")
            && all.contains("primary key"),
        "{all}"
    );
    assert_eq!(slots(&src), "");
    assert_eq!(publications(&src, "app"), "");
    assert!(!database_exists(&dst, "app"));

    // The default copies everything, replicates the rest, says which it left out and why.
    let out = run(&s, &t, &["init", "--progress", "none"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let warning = all
        .lines()
        .find(|l| l.starts_with("warning: copied but not replicated"))
        .unwrap_or_else(|| panic!("a warning naming the tables: {all}"));
    assert!(
        warning.contains("public.nopk")
            && warning.contains("public.jsonfull")
            && warning.contains("public.defpk")
            && warning.contains("public.keyedkid"),
        "{warning}"
    );
    assert!(all.contains("replicating:"), "{all}");
    assert_eq!(
        src.psql(
            "app",
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables"
        ),
        "keyed"
    );
    // keyedkid inherits from keyed without a key of its own: publishing keyed must not take
    // it along (UPDATE keyed reaches its rows too).
    for table in ["nopk", "jsonfull", "defpk", "keyed", "keyedkid"] {
        let out = app_writes(&src, "app", table);
        assert!(
            out.status.success(),
            "UPDATE and DELETE on {table} still work on the source: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            dst.psql("app", &format!("SELECT count(*) FROM {table}")),
            src.psql("app", &format!("SELECT count(*) FROM {table}")),
        );
    }
    // The replicated table follows.
    src.psql("app", "INSERT INTO keyed VALUES (2, 'after')");
    wait_for("the insert to replicate", || {
        dst.psql("app", "SELECT count(*) FROM ONLY keyed") == "2"
    });
    // A cutover that would not look at the tables left out is refused, before anything changes.
    let out = run(&s, &t, &["cutover", "--role", "postgres", "--skip-verify"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("copied but not replicated") && text(&out).contains("public.nopk"),
        "{}",
        text(&out)
    );
    assert_eq!(
        src.psql("postgres", "SELECT count(*) FROM pg_db_role_setting"),
        "0",
        "no role was frozen"
    );
    let out = run(&s, &t, &["sync", "--stop"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A source with enough rows that the copy is under way when the proxy stalls it.
fn big_source() -> Cluster {
    let src = Cluster::start(&Options::source());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE big (id int PRIMARY KEY, b text);
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 50000) g;
         CREATE TABLE nopk (a int, b text); INSERT INTO nopk VALUES (1, 'x');",
    );
    src
}

/// Start `init` (sync on) into `target` and wait until its data phase hangs on the stalled
/// COPY, with its slot made.
fn stalled_init(src: &Cluster, proxy: &Proxy, extra: &[&str]) -> Child {
    let target = via(proxy, "app");
    let child = cli(&src.url("app"), &target)
        .args(["init", "--progress", "log"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start init");
    // The proxy's stall must have fired: pg_stat_activity keeps a finished (or not yet
    // flowing) COPY's text too, and a fault still armed would stall the next command instead.
    wait_for("the slot and a stalled COPY", || {
        proxy.fired() > 0
            && slots(src).starts_with("seren_")
            && src.psql(
                "app",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%TO STDOUT%'",
            ) != "0"
    });
    child
}

/// `kill -9` the run `child` and wait until its sessions on `src` (and its run lock) are gone.
fn kill_9(child: &mut Child, src: &Cluster) {
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    wait_for("the killed run's sessions to end", || {
        src.psql(
            "app",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        ) == "0"
    });
}

/// Wait until the copy into `dst`'s database `app` has recorded `n` finished units.
fn wait_for_finished_units(dst: &Cluster, n: u32) {
    wait_for(&format!("{n} finished unit(s)"), || {
        dst.psql(
            "app",
            "SELECT count(*) FROM pg_namespace WHERE nspname = '_seren_replicator'",
        ) == "1"
            && dst.psql(
                "app",
                "SELECT count(*) FROM _seren_replicator.units WHERE done",
            ) == n.to_string()
    });
}

fn stalling_target(dst: &Cluster) -> Proxy {
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(Trigger::ClientCopyBytes(1), Action::Stall));
    proxy
}

fn via(proxy: &Proxy, db: &str) -> String {
    format!(
        "postgresql://postgres@127.0.0.1:{}/{db}?sslmode=disable",
        proxy.port()
    )
}

#[test]
fn kill_9_mid_copy_leaves_a_slot_that_the_next_command_drops_and_says_so() {
    let src = big_source();
    let dst = Cluster::start(&Options::target());
    let proxy = stalling_target(&dst);
    let mut child = stalled_init(&src, &proxy, &[]);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let slot = slots(&src);
    assert!(slot.starts_with("seren_"), "the killed run left its slot");
    wait_for("the killed run's sessions to end", || {
        src.psql(
            "app",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        ) == "0"
    });
    // The same URLs as the killed run (the proxy's fault is spent: it only forwards now).
    let (s, t) = (src.url("app"), via(&proxy, "app"));

    // validate names it, with the WAL it keeps.
    let out = run(&s, &t, &["validate"]);
    let line = text(&out)
        .lines()
        .find(|l| l.contains("source.leftover_slots"))
        .map(str::to_owned)
        .expect("a leftover slot line");
    assert!(
        line.starts_with("warn") && line.contains(&slot) && line.contains("bytes of WAL"),
        "{line}"
    );
    assert_eq!(slots(&src), slot, "validate changes nothing");

    // status drops it, saying so.
    let out = run(&s, &t, &["status"]);
    assert!(
        text(&out).contains(&format!("dropped the replication slot {slot}")),
        "{}",
        text(&out)
    );
    assert_eq!(slots(&src), "");
    assert_eq!(publications(&src, "app"), "");

    // --resume finishes the copy under a new snapshot and slot, and replicates from there;
    // verify finds it exact; the application's writes work on every table.
    let out = run(&s, &t, &["init", "--resume", "--progress", "none"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("replicating:"), "{}", text(&out));
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("all 2 tables equal"), "{}", text(&out));
    assert_eq!(slots(&src), slot);
    for table in ["big", "nopk"] {
        assert!(app_writes(&src, "app", table).status.success());
    }
    let out = run(&s, &t, &["sync", "--stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(slots(&src), "");
    assert_eq!(publications(&src, "app"), "");
}

#[test]
fn kill_9_then_resume_drops_the_slot_itself() {
    let src = big_source();
    let dst = Cluster::start(&Options::target());
    let proxy = stalling_target(&dst);
    let mut child = stalled_init(&src, &proxy, &[]);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let slot = slots(&src);
    wait_for("the killed run's sessions to end", || {
        src.psql(
            "app",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        ) == "0"
    });
    let (s, t) = (src.url("app"), via(&proxy, "app"));
    // Without replication this time: the killed run's slot is dropped and none is made.
    let out = run(
        &s,
        &t,
        &["init", "--resume", "--no-sync", "--progress", "none"],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(&format!("dropped the replication slot {slot}")),
        "{all}"
    );
    assert_eq!(slots(&src), "");
    assert_eq!(publications(&src, "app"), "");
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Every row of `table` in key order, as one digest.
fn rows_digest(c: &Cluster, db: &str, table: &str) -> String {
    c.psql(
        db,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(ROW(t.*)::text, ',' \
             ORDER BY ROW(t.*)::text)), '') FROM {table} t"
        ),
    )
}

/// Writes of an application on `big` and `small`: updates, deletes and inserts.
fn app_round(c: &Cluster, db: &str, round: u32) {
    let base = 100_000 + round * 10;
    c.psql(
        db,
        &format!(
            "UPDATE small SET v = v + 1 WHERE id % 7 = {m}; DELETE FROM small WHERE id = {d}; \
             INSERT INTO small VALUES ({base}, 0), ({b1}, 1); \
             UPDATE big SET b = b || 'u' WHERE id % 97 = {m}; DELETE FROM big WHERE id = {d2}; \
             INSERT INTO big VALUES ({base}, 'new')",
            m = round % 7,
            d = round + 1,
            b1 = base + 1,
            d2 = 40_000 + round,
        ),
    );
}

/// The headline of a resumable migration: a run with replication is killed with `kill -9`
/// mid-copy, the application writes on (to tables the run had finished and to the one it was
/// copying), `--resume` finishes the copy under a new snapshot while the writes go on, and
/// replication then carries every change: the target ends equal to the source row for row.
#[test]
fn kill_9_then_resume_replicates_every_change_without_a_gap() {
    let src = big_source();
    src.psql(
        "app",
        "CREATE TABLE small (id int PRIMARY KEY, v int); \
         INSERT INTO small SELECT g, g FROM generate_series(1, 1000) g;",
    );
    let dst = Cluster::start(&Options::target());
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["COPY \"public\".\"big\"".into()]),
        Action::Stall,
    ));
    let mut child = stalled_init(&src, &proxy, &["--jobs", "2"]);
    wait_for_finished_units(&dst, 2);
    kill_9(&mut child, &src);
    for round in 0..5 {
        app_round(&src, "app", round);
    }
    let (s, t) = (src.url("app"), via(&proxy, "app"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut round = 5;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                app_round(&src, "app", round);
                round += 1;
            }
            round
        });
        let out = run(&s, &t, &["init", "--resume", "--progress", "none"]);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = writer.join().expect("writer");
        assert!(rounds > 6, "the application wrote during the resume");
        out
    });
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("replicating:"), "{all}");
    assert!(
        all.contains("range(s) that had changed since were copied again"),
        "{all}"
    );
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("all 3 tables equal"), "{}", text(&out));
    for table in ["big", "small"] {
        let want = rows_digest(&src, "app", table);
        wait_for(&format!("{table} to be equal row for row"), || {
            rows_digest(&dst, "app", table) == want
        });
    }
    let out = run(&s, &t, &["sync", "--stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(slots(&src), "");
    assert_eq!(publications(&src, "app"), "");
}

/// A resume on finished tables that would trip a naive comparison or replacement: a unique
/// value moved from one part of the table to another (replacing the parts one by one would
/// collide with the old row), columns named like the checksum's own alias and like their table
/// (a whole-row reference would read the column), and a table created on the source between
/// the runs (it has no definition on the target: the resume leaves it out and says so).
#[test]
fn resume_brings_tricky_finished_tables_up_to_date_and_leaves_out_new_ones() {
    let src = big_source();
    src.psql(
        "app",
        "CREATE TABLE uq (id int PRIMARY KEY, email text NOT NULL UNIQUE, v int); \
         INSERT INTO uq SELECT g, 'e' || g, g FROM generate_series(1, 5000) g; \
         CREATE TABLE odd (id int PRIMARY KEY, t int, odd text); \
         INSERT INTO odd SELECT g, 1, 'x' FROM generate_series(1, 100) g;",
    );
    let dst = Cluster::start(&Options::target());
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["COPY \"public\".\"big\"".into()]),
        Action::Stall,
    ));
    let mut child = stalled_init(&src, &proxy, &["--jobs", "2"]);
    wait_for_finished_units(&dst, 3);
    wait_for("the unique index on uq", || {
        dst.psql(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'uq' AND indexdef LIKE '%UNIQUE%'",
        ) == "2"
    });
    kill_9(&mut child, &src);
    src.psql(
        "app",
        "UPDATE uq SET email = 'moving' WHERE id = 10; UPDATE uq SET email = 'e10' WHERE id = 4000; \
         UPDATE uq SET email = 'e4000' WHERE id = 10; \
         UPDATE odd SET odd = 'changed' WHERE id = 50; \
         CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (1);",
    );
    let (s, t) = (src.url("app"), via(&proxy, "app"));
    let out = run(&s, &t, &["init", "--resume", "--progress", "none"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("replicating:"), "{all}");
    assert!(
        all.contains("neither copied nor replicated: public.later"),
        "{all}"
    );
    for table in ["uq", "odd"] {
        assert_eq!(
            rows_digest(&dst, "app", table),
            rows_digest(&src, "app", table),
            "{table} equal row for row: {all}"
        );
    }
    src.psql("app", "DROP TABLE later");
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&s, &t, &["sync", "--stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(slots(&src), "");
}

/// Every large object of database `db`: oid and md5 of its content, in oid order.
fn large_objects(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "SELECT coalesce(string_agg(oid || ':' || md5(lo_get(oid)), ',' ORDER BY oid), '') \
         FROM pg_largeobject_metadata",
    )
}

/// Killed after its large objects were copied (while it analyzes), a run's resume brings
/// them to its new snapshot as it does the tables: one changed since is copied again (one made
/// shorter too, so no old bytes remain past its end), one removed since is removed, one
/// created since is copied.
#[test]
fn resume_after_the_large_objects_brings_them_up_to_date() {
    let src = big_source();
    src.psql(
        "app",
        "SELECT lo_from_bytea(1001, 'one, the first version, long'); \
         SELECT lo_from_bytea(1002, 'two'); SELECT lo_from_bytea(1003, 'three');",
    );
    let dst = Cluster::start(&Options::target());
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["ANALYZE".into()]),
        Action::Stall,
    ));
    let mut child = cli(&src.url("app"), &via(&proxy, "app"))
        .args(["init", "--progress", "log", "--jobs", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start init");
    wait_for("the stalled ANALYZE", || proxy.fired() > 0);
    assert_eq!(large_objects(&dst, "app"), large_objects(&src, "app"));
    kill_9(&mut child, &src);
    src.psql(
        "app",
        "BEGIN; SELECT lo_truncate64(lo_open(1001, 131072), 0); SELECT lo_put(1001, 0, 'one, v2'); \
         COMMIT; SELECT lo_unlink(1002); SELECT lo_from_bytea(1004, 'four');",
    );
    let (s, t) = (src.url("app"), via(&proxy, "app"));
    let out = run(&s, &t, &["init", "--resume", "--progress", "none"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("replicating:"), "{all}");
    assert_eq!(
        large_objects(&dst, "app"),
        large_objects(&src, "app"),
        "{all}"
    );
    let out = run(&s, &t, &["sync", "--stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(slots(&src), "");
}

fn sigterm(child: Child) -> (Output, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(143), "{all}");
    assert!(all.contains("interrupted (SIGTERM)"), "{all}");
    (out, all)
}

#[test]
fn sigterm_before_any_row_moved_leaves_nothing_behind() {
    let src = big_source();
    let dst = Cluster::start(&Options::target());
    let proxy = stalling_target(&dst);
    // One pair: big, the first unit, hangs; nothing has committed when the signal comes.
    let child = stalled_init(&src, &proxy, &["--jobs", "1"]);
    let (_, all) = sigterm(child);
    assert!(all.contains("run the same command again"), "{all}");
    assert_eq!(slots(&src), "", "no slot left: {all}");
    assert_eq!(publications(&src, "app"), "");
    assert!(!database_exists(&dst, "app"), "{all}");
    let out = run(
        &src.url("app"),
        &via(&proxy, "app"),
        &["init", "--progress", "none"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn sigterm_mid_copy_drops_the_slot_and_keeps_what_finished_for_resume() {
    let src = big_source();
    let dst = Cluster::start(&Options::target());
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["COPY \"public\".\"big\"".into()]),
        Action::Stall,
    ));
    let child = stalled_init(&src, &proxy, &["--jobs", "2"]);
    // `sync` must not start replication into a copy still being made.
    let out = run(&src.url("app"), &via(&proxy, "app"), &["sync"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("in progress"), "{}", text(&out));
    wait_for_finished_units(&dst, 1);
    let (_, all) = sigterm(child);
    assert!(all.contains("--resume"), "{all}");
    assert_eq!(slots(&src), "", "no slot left: {all}");
    assert_eq!(publications(&src, "app"), "");
    let (s, t) = (src.url("app"), via(&proxy, "app"));
    let out = run(&s, &t, &["init", "--resume", "--progress", "none"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_role_missing_on_the_target_is_found_before_anything_changes() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE ROLE app_owner NOLOGIN; CREATE ROLE app_reader NOLOGIN;
         CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
         ALTER TABLE t OWNER TO app_owner; GRANT SELECT ON t TO app_reader;",
    );
    let (s, t) = (src.url("app"), dst.url("app"));
    let out = run(&s, &t, &["init", "--progress", "none"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    let error = all
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        error.contains("app_owner")
            && error.contains("--no-owner")
            && error.contains("app_reader")
            && error.contains("--no-privileges"),
        "{error}"
    );
    assert!(!database_exists(&dst, "app"), "nothing was created");
    assert_eq!(slots(&src), "");
    // validate reports the same.
    let out = run(&s, &t, &["validate"]);
    assert!(
        text(&out).lines().any(|l| l.starts_with("fail")
            && l.contains("target.roles")
            && l.contains("app_owner")),
        "{}",
        text(&out)
    );
    // The fix the message names works.
    let out = run(
        &s,
        &t,
        &[
            "init",
            "--no-owner",
            "--no-privileges",
            "--progress",
            "none",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dst.psql("app", "SELECT count(*) FROM t"), "1");
}

#[test]
fn a_restore_that_fails_before_any_row_moved_leaves_nothing_behind() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    // The restore's connection breaks while it creates the table.
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["CREATE TABLE public.t".into()]),
        Action::Cut,
    ));
    let s = src.url("app");
    let out = run(&s, &via(&proxy, "app"), &["init", "--progress", "none"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert_eq!(proxy.fired(), 1);
    assert!(all.contains("removed the target database app"), "{all}");
    assert!(!database_exists(&dst, "app"), "{all}");
    assert_eq!(slots(&src), "", "{all}");
    assert_eq!(publications(&src, "app"), "");
    // A plain retry is not refused as "an interrupted copy".
    let out = run(&s, &dst.url("app"), &["init", "--progress", "none"]);
    assert!(out.status.success(), "{}", text(&out));

    // Into an existing, empty database: it stays, without the bookkeeping.
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["CREATE TABLE public.t".into()]),
        Action::Cut,
    ));
    dst.create_db("empty");
    let out = run(
        &s,
        &via(&proxy, "empty"),
        &["init", "--no-sync", "--progress", "none"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(database_exists(&dst, "empty"));
    assert_eq!(
        dst.psql(
            "empty",
            "SELECT count(*) FROM pg_namespace WHERE nspname = '_seren_replicator'"
        ),
        "0"
    );
    let out = run(
        &s,
        &dst.url("empty"),
        &["init", "--no-sync", "--progress", "none"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_complete_copy_whose_subscription_failed_is_kept_and_resume_starts_it() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
    );
    let (s, t) = (src.url("app"), dst.url("app"));
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
    assert!(!out.status.success(), "{}", text(&out));
    let slot = slots(&src);
    assert!(
        slot.starts_with("seren_"),
        "the slot is kept for the complete copy"
    );

    // Neither status nor a plain init takes the waiting slot for a leftover.
    let out = run(&s, &t, &["status"]);
    assert!(
        text(&out).contains("holds the source's changes since a complete copy"),
        "{}",
        text(&out)
    );
    assert_eq!(slots(&src), slot);
    let out = run(&s, &t, &["init", "--progress", "none"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("holds a complete copy whose replication has not started"),
        "{}",
        text(&out)
    );
    assert_eq!(slots(&src), slot);

    // Changes meanwhile stay in the slot; --resume subscribes from it.
    src.psql(
        "app",
        "INSERT INTO t VALUES (1001, 'later'); DELETE FROM t WHERE id = 1",
    );
    let out = run(&s, &t, &["init", "--resume", "--progress", "none"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("replicating:"), "{}", text(&out));
    assert_eq!(
        dst.psql(
            "app",
            "SELECT count(*) FROM pg_namespace WHERE nspname = '_seren_replicator'"
        ),
        "0",
        "the bookkeeping went with the subscription"
    );
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        dst.psql("app", "SELECT count(*) FROM t WHERE id IN (1, 1001)"),
        "1"
    );
    let out = run(&s, &t, &["sync", "--stop"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_slot_of_the_same_name_made_for_another_server_is_never_taken() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    dst.create_db("app");
    let (s, t) = (src.url("app"), dst.url("app"));
    let status = run(&s, &t, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let name = v["slot_name"].as_str().expect("slot name").to_owned();
    // Another machine's "same" target (its own localhost, say) replicates from this slot.
    src.psql(
        "app",
        &format!(
            "SELECT pg_create_logical_replication_slot('{name}', 'pgoutput');
             CREATE PUBLICATION {name} FOR TABLE t;
             COMMENT ON PUBLICATION {name} IS
               'postgres-seren-replicator: replication into elsewhere [target system 42]';"
        ),
    );
    let out = run(&s, &t, &["status"]);
    assert!(
        text(&out).contains("another server (system 42)"),
        "{}",
        text(&out)
    );
    assert_eq!(slots(&src), name, "status leaves it");
    let out = run(&s, &t, &["init", "--sync", "--progress", "none"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("already exists on the source"),
        "{}",
        text(&out)
    );
    assert_eq!(slots(&src), name, "init leaves it");
    assert_eq!(publications(&src, "app"), name);
}

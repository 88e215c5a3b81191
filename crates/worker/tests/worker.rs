//! The worker against real PostgreSQL clusters, the SQLite store and the key-file sealer: a job
//! runs to `completed` with the target equal to the source; a second worker loses the claim; a
//! bad source host fails the job with a code and a clear message; a cancel stops a copy midway;
//! verify and validate jobs record their reports.

use std::sync::Arc;
use std::time::Duration;

use job_model::seal::{Field, LocalSealer};
use job_model::store::sqlite::SqliteStore;
use job_model::{
    Change, Command, Expect, FilterSpec, Job, JobSpec, JobStatus, JobStore, Options, Owner, Sealer,
    Secret, Timestamp,
};
use pg_harness::{bindir, Cluster};
use worker::{Config, Outcome};

struct Env {
    store: Arc<dyn JobStore>,
    sealer: Arc<dyn Sealer>,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    Env {
        store: Arc::new(SqliteStore::open(&dir.path().join("jobs.db")).expect("store")),
        sealer: Arc::new(LocalSealer::open_or_create(&dir.path().join("k")).expect("sealer")),
        _dir: dir,
    }
}

/// An `init` job in `provisioning` on `instance`, as the coordinator leaves it.
async fn provisioned(e: &Env, source: &str, target: &str, options: Options, instance: &str) -> Job {
    provisioned_for(e, Command::Init, source, target, options, instance).await
}

/// A job running `command`, in `provisioning` on `instance`.
async fn provisioned_for(
    e: &Env,
    command: Command,
    source: &str,
    target: &str,
    options: Options,
    instance: &str,
) -> Job {
    let job = pending(e, command, source, target, options).await;
    e.store
        .transition(
            &job.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Provisioning, Timestamp::now()).instance(instance),
        )
        .await
        .expect("provision")
}

/// A job running `command`, just submitted (`pending`).
async fn pending(e: &Env, command: Command, source: &str, target: &str, options: Options) -> Job {
    let id = Job::new_id();
    let seal = |u: &str, field: Field| {
        let (s, id) = (e.sealer.clone(), id.clone());
        let u = Secret::new(u);
        async move { s.seal(&id, field, &u).await.expect("seal") }
    };
    let job = Job::new(
        id.clone(),
        Owner("key-test".into()),
        JobSpec {
            command,
            filter: FilterSpec::default(),
            options,
        },
        (
            seal(source, Field::SourceUrl).await,
            seal(target, Field::TargetUrl).await,
        ),
        ("src".into(), "dst".into()),
        None,
        Timestamp::now(),
        job_model::job::DEFAULT_RETENTION,
    );
    e.store.create(&job, None).await.expect("create");
    job
}

/// Run the worker for `job` as `instance` until it ends on its own.
async fn run_on(e: &Env, job: &Job, instance: &str) -> Outcome {
    worker::run(
        e.store.clone(),
        e.sealer.clone(),
        cfg(job, instance),
        std::future::pending(),
    )
    .await
    .expect("run")
}

fn cfg(job: &Job, instance: &str) -> Config {
    let mut c = Config::new(job.job_id.clone(), instance);
    c.heartbeat_every = Duration::from_millis(200);
    c.pg_bindir = Some(bindir());
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn content(c: &Cluster, db: &str, table: &str) -> String {
    c.psql(
        db,
        &format!("SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"),
    )
}

#[test]
fn a_claimed_job_copies_the_database_and_completes() {
    let src = Cluster::start(&pg_harness::Options::source());
    let dst = Cluster::start(&pg_harness::Options::target());
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, since date);
         INSERT INTO customers SELECT g, 'c' || g, date '2020-01-01' + g FROM generate_series(1, 5000) g;
         CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers, total numeric);
         INSERT INTO orders (customer, total) SELECT 1 + g % 5000, g * 1.5 FROM generate_series(1, 20000) g;",
    );
    let e = env();
    rt().block_on(async {
        let job = provisioned(
            &e,
            &src.url("shop"),
            &dst.url("shop"),
            Options {
                jobs: Some(2),
                ..Options::default()
            },
            "local-1",
        )
        .await;
        let outcome = run_on(&e, &job, "local-1").await;
        assert_eq!(outcome, Outcome::Completed);
        let done = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(done.status, JobStatus::Completed);
        assert_eq!(done.instance_id.as_deref(), Some("local-1"));
        assert!(done.started_at.is_some() && done.finished_at.is_some());
        let p = done.progress.expect("final progress");
        assert_eq!((p.tables_done, p.tables_total), (2, 2));
        assert_eq!(p.rows, 25_000);
    });
    for t in ["customers", "orders"] {
        assert_eq!(content(&src, "shop", t), content(&dst, "shop", t), "{t}");
    }
    assert_eq!(
        dst.psql("shop", "SELECT last_value FROM orders_id_seq"),
        src.psql("shop", "SELECT last_value FROM orders_id_seq")
    );
}

#[test]
fn a_second_worker_loses_the_claim_and_leaves_the_job_alone() {
    let e = env();
    rt().block_on(async {
        let job = provisioned(
            &e,
            "postgresql://u@nowhere.invalid/db",
            "postgresql://u@nowhere.invalid/db2",
            Options::default(),
            "i-first",
        )
        .await;
        // The first worker claims it.
        e.store
            .transition(
                &job.job_id,
                Expect::status(JobStatus::Provisioning),
                Change::to(JobStatus::Running, Timestamp::now()).instance("i-first"),
            )
            .await
            .expect("first claim");
        let outcome = run_on(&e, &job, "i-second").await;
        assert_eq!(outcome, Outcome::LostClaim(JobStatus::Running));
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(
            (j.status, j.instance_id.as_deref()),
            (JobStatus::Running, Some("i-first"))
        );
    });
}

#[test]
fn a_bad_source_host_fails_the_job_with_a_code_and_no_password() {
    let dst = Cluster::start(&pg_harness::Options::target());
    let e = env();
    rt().block_on(async {
        let job = provisioned(
            &e,
            "postgresql://app:hunter2%3B%26%26@db.nonexistent.invalid:5432/shop?connect_timeout=3",
            &dst.url("shop"),
            Options::default(),
            "local-1",
        )
        .await;
        let outcome = run_on(&e, &job, "local-1").await;
        let Outcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(err.code, "source_unreachable");
        assert!(
            err.message.contains("db.nonexistent.invalid"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("hunter2"), "{}", err.message);
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(j.status, JobStatus::Failed);
        assert_eq!(j.error, Some(err));
    });
}

#[test]
fn a_cancel_request_stops_the_copy_and_records_cancelled() {
    let src = Cluster::start(&pg_harness::Options::source());
    let dst = Cluster::start(&pg_harness::Options::target());
    src.create_db("big");
    src.psql(
        "big",
        "CREATE TABLE wide (id bigint, payload text);
         INSERT INTO wide SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 1500000) g;",
    );
    let e = env();
    let runtime = rt();
    let took = runtime.block_on(async {
        let job = provisioned(
            &e,
            &src.url("big"),
            &dst.url("big"),
            Options {
                jobs: Some(1),
                ..Options::default()
            },
            "local-1",
        )
        .await;
        let store = e.store.clone();
        let id = job.job_id.clone();
        let canceller = tokio::spawn(async move {
            // Wait until the worker runs and rows are moving, then ask it to stop.
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let j = store.get(&id).await.expect("get").expect("job");
                if j.status.is_terminal()
                    || j.progress
                        .as_ref()
                        .is_some_and(|p| p.rows > 0 || p.phase == "data")
                {
                    break;
                }
            }
            store
                .request_cancel(&id, Timestamp::now())
                .await
                .expect("cancel");
        });
        let started = std::time::Instant::now();
        let outcome = run_on(&e, &job, "local-1").await;
        canceller.await.expect("canceller");
        assert_eq!(outcome, Outcome::Cancelled);
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(j.status, JobStatus::Cancelled);
        assert_eq!(j.error.map(|e| e.code), Some("cancelled".into()));
        started.elapsed()
    });
    // Only now, with the runtime and the abandoned copy's connections gone: while they live,
    // the unfinished unit's TRUNCATE lock would make this count wait for ever.
    drop(runtime);
    // It stopped midway rather than finishing the copy; with its only unit in flight nothing
    // had committed, so the engine took away the database it had created.
    assert_eq!(
        dst.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'big'"
        ),
        "0",
        "stopped after {took:?} without leaving a half-made target"
    );
}

/// A stop signal (SIGTERM from systemd) while the copy runs: on the job's last attempt it is
/// `failed` with `worker_stopped`; before, it waits `pending` for its next worker. The copy is
/// held behind a lock so that the signal always lands mid-copy (a fixed delay raced a fast
/// machine's copy, which then completed first).
#[test]
fn a_stop_signal_fails_the_job_as_worker_stopped() {
    stop_signal(Some(1), (JobStatus::Failed, 1));
    stop_signal(None, (JobStatus::Pending, 2));
}

fn stop_signal(max_attempts: Option<u32>, want: (JobStatus, u32)) {
    let (src, mut locker) = locked_source();
    let dst = Cluster::start(&pg_harness::Options::target());
    let e = env();
    rt().block_on(async {
        let job = provisioned(
            &e,
            &src.url("shop"),
            &dst.url("shop"),
            Options {
                max_attempts,
                ..Options::default()
            },
            "local-1",
        )
        .await;
        let (store, id) = (e.store.clone(), job.job_id.clone());
        let stop = async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let j = store.get(&id).await.expect("get").expect("job");
                // The locked table holds the copy (pg_dump waits for it in pre-data).
                if j.progress.is_some() {
                    break;
                }
            }
        };
        let outcome = worker::run(
            e.store.clone(),
            e.sealer.clone(),
            cfg(&job, "local-1"),
            stop,
        )
        .await
        .expect("run");
        assert_eq!(outcome, Outcome::Stopped);
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(
            (j.status, j.attempt, j.error.map(|e| e.code)),
            (want.0, want.1, Some("worker_stopped".into()))
        );
    });
    let _ = locker.kill();
    let _ = locker.wait();
}

/// Run a fresh `command` job on `local-1` to its end.
async fn run_job(e: &Env, command: Command, source: &str, target: &str) -> (Outcome, Job) {
    run_job_with(e, command, source, target, Options::default(), "local-1").await
}

/// [`run_job`] with `options`, on `instance`.
async fn run_job_with(
    e: &Env,
    command: Command,
    source: &str,
    target: &str,
    options: Options,
    instance: &str,
) -> (Outcome, Job) {
    let job = provisioned_for(e, command, source, target, options, instance).await;
    let outcome = run_on(e, &job, instance).await;
    let done = e.store.get(&job.job_id).await.expect("get").expect("job");
    (outcome, done)
}

#[test]
fn verify_and_validate_jobs_record_their_reports() {
    let src = Cluster::start(&pg_harness::Options::source());
    let dst = Cluster::start(&pg_harness::Options::target());
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 3000) g;
         CREATE TABLE notes (body text);
         INSERT INTO notes SELECT 'n' || g FROM generate_series(1, 50) g;",
    );
    let e = env();
    rt().block_on(async {
        let (outcome, _) = run_job(&e, Command::Init, &src.url("shop"), &dst.url("shop")).await;
        assert_eq!(outcome, Outcome::Completed);

        let (outcome, done) =
            run_job(&e, Command::Verify, &src.url("shop"), &dst.url("shop")).await;
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(done.status, JobStatus::Completed);
        let report = serde_json::to_value(done.result.expect("a verify job records its report"))
            .expect("JSON");
        assert_eq!(report["equal"], true, "{report}");
        assert_eq!(report["tables"].as_array().map(Vec::len), Some(2));
        assert_eq!(done.progress.map(|p| p.phase).as_deref(), Some("done"));

        dst.psql("shop", "UPDATE items SET name = 'changed' WHERE id = 2000");
        let (outcome, done) =
            run_job(&e, Command::Verify, &src.url("shop"), &dst.url("shop")).await;
        let Outcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(err.code, "verify_mismatch");
        assert!(
            err.message.contains("1 of 2 tables differ") && err.message.contains("public.items"),
            "{}",
            err.message
        );
        assert_eq!(done.status, JobStatus::Failed);
        let report = serde_json::to_value(done.result.expect("the report of a failed verify"))
            .expect("JSON");
        let items = report["tables"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["table"] == "public.items"))
            .expect("items in the report");
        assert_eq!(items["equal"], false);
        assert!(
            items["mismatches"][0]["description"]
                .as_str()
                .is_some_and(|d| d.contains("contents differ")),
            "{items}"
        );

        let (outcome, done) =
            run_job(&e, Command::Validate, &src.url("shop"), &dst.url("shop")).await;
        assert_eq!(outcome, Outcome::Completed, "{:?}", done.result);
        let report = serde_json::to_value(done.result.expect("a validate job records its checks"))
            .expect("JSON");
        assert_eq!(report["ok"], true, "{report}");
        assert!(report["checks"].as_array().is_some_and(|c| c.len() >= 10));

        // The target cluster has wal_level=replica: as a source it fails a check.
        dst.create_db("other");
        let (outcome, done) =
            run_job(&e, Command::Validate, &dst.url("shop"), &src.url("other")).await;
        let Outcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(err.code, "validate_failed");
        assert!(err.message.contains("source.wal_level"), "{}", err.message);
        let report = serde_json::to_value(done.result.expect("the checks of a failed validate"))
            .expect("JSON");
        assert_eq!(report["ok"], false);
    });
}

#[test]
fn a_worker_started_before_its_job_is_marked_provisioning_waits_for_it() {
    // The coordinator records `provisioning` after the launch call returns; a local worker
    // process can be quicker than that.
    let e = env();
    rt().block_on(async {
        let job = pending(
            &e,
            Command::Validate,
            "postgresql://u:Hunter2Secret@db.nonexistent.invalid/x?connect_timeout=1",
            "postgresql://u:Hunter2Secret@db2.nonexistent.invalid/x?connect_timeout=1",
            Options::default(),
        )
        .await;
        let id = job.job_id.clone();
        let store = e.store.clone();
        let mark = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            store
                .transition(
                    &id,
                    Expect::status(JobStatus::Pending),
                    Change::to(JobStatus::Provisioning, Timestamp::now()).instance("local-1"),
                )
                .await
                .expect("provision")
        });
        let outcome = run_on(&e, &job, "local-1").await;
        mark.await.expect("marked");
        // It claimed the job and ran it (both hosts unreachable: the checks fail).
        let Outcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(err.code, "validate_failed", "{}", err.message);
        let done = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(done.instance_id.as_deref(), Some("local-1"));
        assert!(done.started_at.is_some());
        // The recorded checks name the hosts, never the password.
        let recorded = format!(
            "{:?} {}",
            done.error,
            serde_json::to_value(done.result.expect("checks")).expect("JSON")
        );
        assert!(recorded.contains("db.nonexistent.invalid"), "{recorded}");
        assert!(!recorded.contains("Hunter2Secret"), "{recorded}");
    });
}

/// A source whose table another session holds an ACCESS EXCLUSIVE lock on: the copy waits
/// behind it for as long as the lock is held. Returns the locking psql (kill it to release).
fn locked_source() -> (Cluster, std::process::Child) {
    let src = Cluster::start(&pg_harness::Options::source());
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
    );
    let mut psql = src.psql_command("shop");
    psql.args([
        "-c",
        "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = psql.spawn().expect("start the locking session");
    // Wait until the lock is held.
    for _ in 0..100 {
        let held = src.psql(
            "shop",
            "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass AND mode = 'AccessExclusiveLock' AND granted",
        );
        if held == "1" {
            return (src, child);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the lock was never taken");
}

#[test]
fn a_copy_stuck_behind_a_lock_fails_as_stalled_and_stops() {
    let (src, mut locker) = locked_source();
    let dst = Cluster::start(&pg_harness::Options::target());
    let e = env();
    rt().block_on(async {
        let job = provisioned(
            &e,
            &src.url("shop"),
            &dst.url("shop"),
            Options::default(),
            "local-1",
        )
        .await;
        let mut c = cfg(&job, "local-1");
        c.stall_after = Some(Duration::from_secs(3));
        let started = std::time::Instant::now();
        let outcome = worker::run(e.store.clone(), e.sealer.clone(), c, std::future::pending())
            .await
            .expect("run");
        assert_eq!(outcome, Outcome::Stalled);
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{:?}",
            started.elapsed()
        );
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(j.status, JobStatus::Failed);
        let err = j.error.expect("error");
        assert_eq!(err.code, "stalled");
        assert!(
            err.message.contains("no progress for 3 s"),
            "{}",
            err.message
        );
    });
    // The worker's sessions are gone: only the locking one is left on the source.
    let others = src.psql(
        "shop",
        "SELECT string_agg(application_name || ': ' || state || ': ' || left(query, 60), ' | ') FROM pg_stat_activity WHERE datname = 'shop' AND pid <> pg_backend_pid() AND query NOT LIKE '%LOCK TABLE%'",
    );
    let _ = locker.kill();
    let _ = locker.wait();
    assert_eq!(others, "", "sessions left waiting on the source");
}

#[test]
fn a_spot_interruption_notice_stops_the_copy_and_records_interrupted() {
    let (src, mut locker) = locked_source();
    let dst = Cluster::start(&pg_harness::Options::target());
    let e = env();
    rt().block_on(async {
        // On its last attempt (max_attempts 1) an interruption fails the job.
        let job = provisioned(
            &e,
            &src.url("shop"),
            &dst.url("shop"),
            Options {
                max_attempts: Some(1),
                ..Options::default()
            },
            "local-1",
        )
        .await;
        // A metadata service that starts announcing the interruption after a second.
        let imds = fake_imds(Duration::from_secs(1)).await;
        let client = aws_config::imds::Client::builder()
            .endpoint(imds.as_str())
            .expect("endpoint")
            .build();
        let notice = worker::spot::interruption_notice(client, Duration::from_millis(200));
        let outcome = worker::run_watched(
            e.store.clone(),
            e.sealer.clone(),
            cfg(&job, "local-1"),
            std::future::pending(),
            notice,
        )
        .await
        .expect("run");
        assert_eq!(outcome, Outcome::Interrupted);
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(j.status, JobStatus::Failed);
        let error = j.error.expect("error");
        assert_eq!(error.code, "interrupted");
        assert!(
            error.message.contains("attempt 1/1: no attempt left"),
            "{}",
            error.message
        );
    });
    let _ = locker.kill();
    let _ = locker.wait();
}

/// A spot interruption in the middle of a copy with replication, two tables of three finished:
/// the worker stops and leaves the job `pending` for its next attempt (not failed); the next
/// worker, on another instance, resumes it (the finished tables kept and brought to its own
/// snapshot, the rest copied), and replication from its slot carries every write made on the
/// source before, between and after the two workers.
#[test]
fn an_interrupted_job_is_resumed_by_its_next_worker_with_replication_intact() {
    use pg_harness::proxy::{Action, Fault, Proxy, Trigger};
    let src = Cluster::start(&pg_harness::Options::source());
    let dst = Cluster::start(&pg_harness::Options::target());
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE a (id int PRIMARY KEY, v int); INSERT INTO a SELECT g, g FROM generate_series(1, 3000) g;
         CREATE TABLE b (id int PRIMARY KEY, v int); INSERT INTO b SELECT g, g FROM generate_series(1, 3000) g;
         CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
    );
    let proxy = Proxy::start(dst.port());
    proxy.arm(Fault::once(
        Trigger::Query(vec!["COPY \"public\".\"big\"".into()]),
        Action::Stall,
    ));
    let target = format!(
        "postgresql://postgres@127.0.0.1:{}/shop?sslmode=disable",
        proxy.port()
    );
    let e = env();
    let finished_units = || {
        if dst.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'shop'",
        ) != "1"
        {
            return "0".to_owned();
        }
        // Two statements: a query naming a table that does not exist fails as it is parsed.
        if dst.psql(
            "shop",
            "SELECT count(*) FROM pg_class WHERE oid = to_regclass('_seren_replicator.units')",
        ) != "1"
        {
            return "0".to_owned();
        }
        dst.psql(
            "shop",
            "SELECT count(*) FROM _seren_replicator.units WHERE done",
        )
    };
    rt().block_on(async {
        let job = provisioned(
            &e,
            &src.url("shop"),
            &target,
            Options {
                sync: Some(job_model::SyncChoice::Required),
                jobs: Some(2),
                ..Options::default()
            },
            "local-1",
        )
        .await;
        // The notice comes once a and b are in and big hangs.
        let notice = async {
            while finished_units() != "2" {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            src.psql(
                "shop",
                "UPDATE a SET v = -v WHERE id <= 10; DELETE FROM b WHERE id = 5;",
            );
            "terminate at 2026-12-07T12:00:00Z".to_owned()
        };
        let outcome = worker::run_watched(
            e.store.clone(),
            e.sealer.clone(),
            cfg(&job, "local-1"),
            std::future::pending(),
            notice,
        )
        .await
        .expect("run");
        assert_eq!(outcome, Outcome::Interrupted);
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!((j.status, j.attempt), (JobStatus::Pending, 2), "{j:?}");
        let why = j.error.expect("why");
        assert_eq!(why.code, "interrupted");
        assert!(
            why.message.ends_with("resuming on attempt 2/3"),
            "{}",
            why.message
        );

        // Writes while no worker runs; then the reaper's part: the next worker is launched.
        src.psql(
            "shop",
            "UPDATE b SET v = 0 WHERE id <= 20; INSERT INTO a VALUES (9999, 1);",
        );
        e.store
            .transition(
                &job.job_id,
                Expect::status(JobStatus::Pending),
                Change::to(JobStatus::Provisioning, Timestamp::now()).instance("local-2"),
            )
            .await
            .expect("provision the next worker");
        let outcome = run_on(&e, &job, "local-2").await;
        let j = e.store.get(&job.job_id).await.expect("get").expect("job");
        assert_eq!(outcome, Outcome::Completed, "{:?}", j.error);
        assert_eq!((j.status, j.attempt), (JobStatus::Completed, 2));
        let Some(job_model::report::JobResult::Init(result)) = j.result else {
            panic!("an init result: {:?}", j.result)
        };
        assert!(result.replicating);
        let warnings = j.progress.map(|p| p.warnings).unwrap_or_default();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("were compared with the source as of a new snapshot")),
            "{warnings:?}"
        );
    });
    src.psql(
        "shop",
        "UPDATE big SET v = 'after' WHERE id <= 3; DELETE FROM a WHERE id = 1;",
    );
    for table in ["a", "b", "big"] {
        let mut equal = false;
        for _ in 0..300 {
            if content(&src, "shop", table) == content(&dst, "shop", table) {
                equal = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(equal, "{table} equal row for row on the target");
    }
    assert_eq!(
        src.psql("shop", "SELECT count(*) FROM pg_replication_slots"),
        "1",
        "one slot: the first worker's was dropped"
    );
}

/// IMDSv2 on loopback: a token for a PUT, 404 for the instance action until `after`, then the
/// notice EC2 gives.
async fn fake_imds(after: Duration) -> String {
    use axum::routing::{get, put};
    let since = std::time::Instant::now();
    let app = axum::Router::new()
        .route(
            "/latest/api/token",
            put(|| async {
                (
                    [("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
                    "token-for-tests",
                )
            }),
        )
        .route(
            "/latest/meta-data/spot/instance-action",
            get(move || async move {
                if since.elapsed() < after {
                    (axum::http::StatusCode::NOT_FOUND, String::new())
                } else {
                    (
                        axum::http::StatusCode::OK,
                        r#"{"action": "terminate", "time": "2026-12-03T12:00:00Z"}"#.to_owned(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[test]
fn the_outcome_is_recorded_through_failing_writes_and_given_up_on_at_the_deadline() {
    use job_model::store::fault::{Call, Faulty, Rule};
    let e = env();
    rt().block_on(async {
        // A validate job against nowhere: quick, and it ends with an outcome to record.
        for (rule, deadline, recorded) in [
            (Rule::First(6), Duration::from_secs(120), true),
            (Rule::Always, Duration::from_secs(2), false),
        ] {
            let job = provisioned_for(
                &e,
                Command::Validate,
                "postgresql://u@nowhere.invalid/db",
                "postgresql://u@nowhere.invalid/db2",
                Options::default(),
                "local-1",
            )
            .await;
            let faulty = Arc::new(Faulty::new(e.store.clone(), 1).with(Call::Finish, rule));
            let mut c = cfg(&job, "local-1");
            c.outcome_backoff.first = Duration::from_millis(10);
            c.outcome_backoff.max = Duration::from_millis(200);
            c.outcome_backoff.deadline = deadline;
            let r = worker::run(faulty.clone(), e.sealer.clone(), c, std::future::pending()).await;
            let j = e.store.get(&job.job_id).await.expect("get").expect("job");
            if recorded {
                assert!(matches!(r, Ok(Outcome::Failed(_))), "{r:?}");
                assert_eq!(
                    j.status,
                    JobStatus::Failed,
                    "recorded after 6 failed writes"
                );
                assert_eq!(faulty.injected(Call::Finish).before, 6);
            } else {
                assert!(r.is_err(), "{r:?}");
                assert_eq!(j.status, JobStatus::Running, "left for the reaper");
            }
        }
    });
}

/// Whoever can write a job's item swaps its two sealed URLs (and would set drop_existing): the
/// blobs are bound to their field, so the worker refuses them instead of taking the target for
/// the source.
#[test]
fn swapped_sealed_urls_do_not_open() {
    let e = env();
    rt().block_on(async {
        let job = provisioned(
            &e,
            "postgresql://u@source.invalid/db",
            "postgresql://u@target.invalid/db",
            Options::default(),
            "local-1",
        )
        .await;
        let s = e
            .sealer
            .open(&job.job_id, Field::SourceUrl, &job.source_secret)
            .await;
        assert!(s.is_ok(), "in place, it opens");
        for (field, blob) in [
            (Field::SourceUrl, &job.target_secret),
            (Field::TargetUrl, &job.source_secret),
        ] {
            assert!(
                e.sealer.open(&job.job_id, field, blob).await.is_err(),
                "{field:?}"
            );
        }
    });
}

/// A session on `db` of `c` that looks like one an interrupted run left behind (it carries the
/// engine's application_name); a run into `db` ends it and warns.
fn leftover_session(c: &Cluster, db: &str) -> std::process::Child {
    let mut psql = c.psql_command(db);
    psql.env("PGAPPNAME", replicator_core::connect::APPLICATION_NAME)
        .args(["-c", "SELECT pg_sleep(600)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = psql.spawn().expect("start the leftover session");
    let app = replicator_core::connect::APPLICATION_NAME;
    for _ in 0..100 {
        let n = c.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name = '{app}'"),
        );
        if n == "1" {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the leftover session never started");
}

#[test]
fn a_remote_copy_records_the_warnings_a_local_run_prints() {
    let src = Cluster::start(&pg_harness::Options::source());
    let dst = Cluster::start(&pg_harness::Options::target());
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
    );
    let rt = rt();
    // Locally, through the engine as the CLI runs it.
    dst.create_db("shop");
    let mut left = leftover_session(&dst, "shop");
    let local = rt.block_on(async {
        let source = replicator_core::ConnUrl::parse(&src.url("shop")).expect("url");
        let target = replicator_core::ConnUrl::parse(&dst.url("shop")).expect("url");
        let mut opts = replicator_core::InitOptions::new(source, target);
        opts.pg_bindir = Some(bindir());
        replicator_core::init(opts, Arc::new(|_: &replicator_core::Event| {}))
            .await
            .expect("local copy")
    });
    let _ = left.wait();
    let ended = local
        .warnings
        .iter()
        .find(|w| w.starts_with("ended 1 session(s)"))
        .unwrap_or_else(|| panic!("no warning about the session in {:?}", local.warnings))
        .clone();

    // The same on a worker: the job record carries the warning, word for word.
    dst.psql("postgres", "DROP DATABASE shop WITH (FORCE)");
    dst.create_db("shop");
    let mut left = leftover_session(&dst, "shop");
    let e = env();
    rt.block_on(async {
        let job = provisioned(
            &e,
            &src.url("shop"),
            &dst.url("shop"),
            Options::default(),
            "local-w",
        )
        .await;
        assert_eq!(run_on(&e, &job, "local-w").await, Outcome::Completed);
        let done = e.store.get(&job.job_id).await.expect("get").expect("job");
        let p = done.progress.expect("progress");
        assert_eq!(
            p.warnings, local.warnings,
            "the remote run warns as the local one"
        );
        assert!(p.warnings.contains(&ended));
    });
    let _ = left.wait();
    assert_eq!(
        content(&src, "shop", "items"),
        content(&dst, "shop", "items")
    );
}

/// `sslmode=verify-full` on a remote job: the worker checks both servers' certificates against
/// its own CA bundle, in its own connections and in `pg_dump`'s (which has no
/// `~/.postgresql/root.crt` on a worker), so a copy between servers whose certificates a
/// throwaway CA signed completes; with a bundle that lacks that CA, nothing is copied.
#[test]
fn verify_full_checks_both_servers_against_the_worker_trust_store() {
    let ca = pg_harness::tls::ThrowawayCa::new("seren test CA");
    let cert = ca.server("db", &["IP:127.0.0.1", "DNS:localhost"]);
    let tls = |o: pg_harness::Options| pg_harness::Options {
        tls: Some(cert.clone()),
        ..o
    };
    let src = Cluster::start(&tls(pg_harness::Options::source()));
    let dst = Cluster::start(&tls(pg_harness::Options::target()));
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, since date);
         INSERT INTO customers SELECT g, 'c' || g, date '2020-01-01' + g FROM generate_series(1, 2000) g;
         CREATE INDEX ON customers (name);",
    );
    let url = |c: &Cluster, db: &str| {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{db}?sslmode=verify-full",
            c.port()
        )
    };
    let other = pg_harness::tls::ThrowawayCa::new("another CA");
    let e = env();
    rt().block_on(async {
        // A bundle without the servers' CA: refused at the first connection, nothing made.
        let job = provisioned(
            &e,
            &url(&src, "shop"),
            &url(&dst, "refused"),
            Options::default(),
            "local-1",
        )
        .await;
        let mut c = cfg(&job, "local-1");
        c.trust_store = Some(other.cert());
        let outcome = worker::run(e.store.clone(), e.sealer.clone(), c, std::future::pending())
            .await
            .expect("run");
        let Outcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            err.message
                .contains("not signed by a CA this machine trusts"),
            "{}: {}",
            err.code,
            err.message
        );
        assert_eq!(
            dst.psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'refused'"
            ),
            "0"
        );

        // The right CA, but a certificate made out to another host: refused too.
        let misnamed = Cluster::start(&pg_harness::Options {
            tls: Some(ca.server("misnamed", &["DNS:db.example.invalid"])),
            ..pg_harness::Options::target()
        });
        let job = provisioned(
            &e,
            &url(&src, "shop"),
            &url(&misnamed, "shop"),
            Options::default(),
            "local-3",
        )
        .await;
        let mut c = cfg(&job, "local-3");
        c.trust_store = Some(ca.cert());
        let outcome = worker::run(e.store.clone(), e.sealer.clone(), c, std::future::pending())
            .await
            .expect("run");
        let Outcome::Failed(err) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            err.message.contains("does not name the host"),
            "{}: {}",
            err.code,
            err.message
        );

        // The worker's bundle holds the CA: the copy (pg_dump's schema included) completes.
        let job = provisioned(
            &e,
            &url(&src, "shop"),
            &url(&dst, "shop"),
            Options::default(),
            "local-2",
        )
        .await;
        let mut c = cfg(&job, "local-2");
        c.trust_store = Some(ca.cert());
        let outcome = worker::run(e.store.clone(), e.sealer.clone(), c, std::future::pending())
            .await
            .expect("run");
        assert_eq!(outcome, Outcome::Completed);
    });
    assert_eq!(
        content(&src, "shop", "customers"),
        content(&dst, "shop", "customers")
    );
}

/// A remote `init` with replication: the worker creates the slot with the copy's snapshot,
/// copies, subscribes the target and goes away; the target server then follows the source by
/// itself, and the job record names what it made. With `auto` and a source that cannot
/// replicate, the job copies and says why in its warnings.
#[test]
fn a_remote_init_with_sync_leaves_the_target_replicating() {
    let src = Cluster::start(&pg_harness::Options::source());
    let dst = Cluster::start(&pg_harness::Options::target());
    src.create_db("shop");
    src.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric);
         INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 5000) g;",
    );
    let e = env();
    let sync = |choice| Options {
        sync: Some(choice),
        ..Options::default()
    };
    rt().block_on(async {
        let (outcome, j) = run_job_with(
            &e,
            Command::Init,
            &src.url("shop"),
            &dst.url("shop"),
            sync(job_model::SyncChoice::Required),
            "local-1",
        )
        .await;
        assert_eq!(outcome, Outcome::Completed);
        let Some(job_model::report::JobResult::Init(result)) = j.result else {
            panic!("an init result: {:?}", j.result)
        };
        let names = replicator_core::sync::SyncNames::for_target(
            &replicator_core::ConnUrl::parse_remote(&dst.url("shop")).expect("url"),
        );
        let made = result.replication.expect("replication");
        assert!(result.replicating);
        assert_eq!(
            (
                made.slot.as_str(),
                made.subscription.as_str(),
                made.published_tables
            ),
            (names.slot.as_str(), names.subscription.as_str(), 1)
        );
        assert_eq!(
            src.psql("shop", "SELECT slot_name FROM pg_replication_slots"),
            names.slot
        );
    });
    // The worker is gone; the target follows the source's writes by itself.
    src.psql(
        "shop",
        "INSERT INTO orders VALUES (5001, 1); UPDATE orders SET total = 0 WHERE id = 7; \
         DELETE FROM orders WHERE id = 8;",
    );
    let mut caught_up = false;
    for _ in 0..300 {
        if content(&src, "shop", "orders") == content(&dst, "shop", "orders") {
            caught_up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(caught_up, "the target did not follow the source's writes");
    // What the record names is what `sync --stop` removes.
    let sub = dst.psql("shop", "SELECT subname FROM pg_subscription");
    dst.psql("shop", &format!("DROP SUBSCRIPTION \"{sub}\""));
    assert_eq!(
        src.psql("shop", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );

    // auto, on a source without wal_level=logical: a copy, and the reason in the warnings.
    let plain = Cluster::start(&pg_harness::Options::target());
    plain.create_db("shop");
    plain.psql(
        "shop",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    rt().block_on(async {
        let (outcome, j) = run_job_with(
            &e,
            Command::Init,
            &plain.url("shop"),
            &dst.url("copy2"),
            sync(job_model::SyncChoice::Auto),
            "local-2",
        )
        .await;
        assert_eq!(outcome, Outcome::Completed);
        assert!(
            matches!(&j.result, Some(job_model::report::JobResult::Init(r)) if !r.replicating && r.replication.is_none()),
            "{:?}",
            j.result
        );
        let warnings = j.progress.map(|p| p.warnings).unwrap_or_default();
        assert!(
            warnings.iter().any(|w| w.contains("wal_level")),
            "{warnings:?}"
        );
    });
    assert_eq!(content(&plain, "shop", "t"), content(&dst, "copy2", "t"));
}

//! One contract, two stores: every test here runs against the SQLite store (a temp file) and
//! the DynamoDB store (a fresh table on moto's server).

use std::sync::Arc;
use std::time::Duration;

use job_model::store::dynamodb::DynamoStore;
use job_model::store::sqlite::SqliteStore;
use job_model::{
    Change, Command, Created, Cursor, ErrorBody, Expect, Job, JobSpec, JobStatus, JobStore, Owner,
    Progress, StoreError, Timestamp,
};

struct Fixture {
    store: Arc<dyn JobStore>,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("jobs.db")).expect("open sqlite");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

async fn dynamo() -> Fixture {
    let moto = moto_harness::Moto::shared();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    let store = DynamoStore::new(client, moto_harness::unique("jobs"));
    store.create_table().await.expect("create table");
    Fixture {
        store: Arc::new(store),
        _dir: None,
    }
}

const T0: i64 = 1_795_000_000_000;

fn at(offset_ms: i64) -> Timestamp {
    // An hour before the tests started, so that TTLs are in the future.
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| Timestamp::now().unix_millis() - 3_600_000);
    Timestamp::from_unix_millis(base + offset_ms)
}

fn job(owner: &str, created: Timestamp, key: Option<&str>) -> Job {
    Job::new(
        Job::new_id(),
        Owner(owner.into()),
        JobSpec {
            command: Command::Init,
            filter: Default::default(),
            options: Default::default(),
        },
        (b"sealed-source".to_vec(), b"sealed-target".to_vec()),
        (
            "postgresql://u@src/db".into(),
            "postgresql://u@dst/db".into(),
        ),
        key.map(str::to_owned),
        created,
        job_model::job::DEFAULT_RETENTION,
    )
}

async fn create(store: &dyn JobStore, j: &Job) -> Job {
    match store.create(j, None).await.expect("create") {
        Created::New(j) => j,
        Created::Existing(j) => panic!("unexpected existing {j:?}"),
    }
}

async fn created_job_reads_back_unchanged(store: Arc<dyn JobStore>) {
    let j = job("key-a", at(0), None);
    create(&*store, &j).await;
    assert_eq!(store.get(&j.job_id).await.expect("get"), Some(j));
    assert_eq!(store.get(&Job::new_id()).await.expect("get"), None);
}

async fn idempotency_key_returns_the_first_job(store: Arc<dyn JobStore>) {
    let first = job("key-a", at(0), Some("submit-1"));
    create(&*store, &first).await;
    let retry = job("key-a", at(10), Some("submit-1"));
    match store.create(&retry, None).await.expect("retry") {
        Created::Existing(j) => assert_eq!(j.job_id, first.job_id),
        Created::New(j) => panic!("second job {j:?}"),
    }
    assert_eq!(store.get(&retry.job_id).await.expect("get"), None);
    // The same key from another owner is another job.
    let other = job("key-b", at(20), Some("submit-1"));
    assert!(matches!(
        store.create(&other, None).await.expect("other owner"),
        Created::New(_)
    ));
}

async fn concurrency_limit_counts_active_jobs(store: Arc<dyn JobStore>) {
    let a = job("key-a", at(0), Some("first"));
    let b = job("key-a", at(1), None);
    assert!(store.create(&a, Some(2)).await.is_ok());
    assert!(store.create(&b, Some(2)).await.is_ok());
    let c = job("key-a", at(2), None);
    let err = store.create(&c, Some(2)).await.expect_err("over the limit");
    assert!(
        matches!(err, StoreError::LimitReached { limit: 2 }),
        "{err}"
    );
    // A repeated submit is answered even at the limit.
    let a_retry = job("key-a", at(3), Some("first"));
    match store
        .create(&a_retry, Some(2))
        .await
        .expect("retry at the limit")
    {
        Created::Existing(j) => assert_eq!(j.job_id, a.job_id),
        Created::New(j) => panic!("second job {j:?}"),
    }
    // Finishing one frees a slot.
    store
        .transition(
            &a.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Cancelled, at(5)),
        )
        .await
        .expect("cancel");
    assert!(store.create(&c, Some(2)).await.is_ok());
    let d = job("key-a", at(6), None);
    assert!(matches!(
        store.create(&d, Some(2)).await,
        Err(StoreError::LimitReached { .. })
    ));
}

async fn life_cycle_and_conditions(store: Arc<dyn JobStore>) {
    let j = job("key-a", at(0), None);
    create(&*store, &j).await;
    let p = store
        .transition(
            &j.job_id,
            Expect::job(&j),
            Change::to(JobStatus::Provisioning, at(1)).instance("i-1"),
        )
        .await
        .expect("provision");
    assert_eq!((p.status, p.version), (JobStatus::Provisioning, 2));
    assert_eq!(p.instance_id.as_deref(), Some("i-1"));
    // A stale version loses.
    let err = store
        .transition(
            &j.job_id,
            Expect::job(&j),
            Change::to(JobStatus::Failed, at(2)),
        )
        .await
        .expect_err("stale");
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                current: JobStatus::Provisioning,
                version: 2,
                ..
            }
        ),
        "{err}"
    );
    let r = store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Provisioning),
            Change::to(JobStatus::Running, at(3)).instance("i-1"),
        )
        .await
        .expect("claim");
    assert_eq!(r.started_at, Some(at(3)));
    assert_eq!(r.heartbeat_at, Some(at(3)));
    let progress = Progress {
        phase: "data".into(),
        tables_done: 1,
        tables_total: 4,
        rows: 1000,
        eta_seconds: Some(12),
        current_tables: vec!["public.t".into()],
        ..Progress::default()
    };
    let h = store
        .heartbeat(&j.job_id, "i-1", Some(&progress), at(4))
        .await
        .expect("heartbeat");
    assert_eq!(h.progress.as_ref(), Some(&progress));
    assert_eq!(h.heartbeat_at, Some(at(4)));
    // Another instance's heartbeat is refused.
    assert!(matches!(
        store.heartbeat(&j.job_id, "i-2", None, at(5)).await,
        Err(StoreError::Conflict { .. })
    ));
    // A verify report: nested lists and maps, nulls, numbers and booleans survive the store.
    let report: job_model::report::JobResult = serde_json::from_value(serde_json::json!({
        "equal": false,
        "compared_at_lsn": null,
        "tables": [
            {"table": "public.a", "method": "key_ranges", "equal": true, "source_rows": 10,
             "target_rows": 10, "ranges": 1, "mismatches": []},
            {"table": "public.b", "method": "whole_table", "equal": false,
             "source_rows": 3_000_000_000_i64, "target_rows": 6, "ranges": 1,
             "mismatches": [{"key": ["id"], "after": null, "up_to": ["7"], "source_rows": 7,
                             "target_rows": 6,
                             "description": "(id) <= 7: 7 rows on the source, 6 on the target"}],
             "mismatches_not_listed": 2}
        ],
        "equal_tables_not_listed": 3
    }))
    .expect("a verify report");
    let done = store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Running),
            Change::to(JobStatus::Failed, at(6))
                .error(ErrorBody::new("verify_mismatch", "1 of 2 tables differ"))
                .result(report.clone()),
        )
        .await
        .expect("fail");
    assert_eq!(done.finished_at, Some(at(6)));
    assert_eq!(
        done.result.as_ref(),
        Some(&report),
        "the report reads back as written"
    );
    assert_eq!(
        done.error.as_ref().map(|e| e.code.as_str()),
        Some("verify_mismatch")
    );
    assert_eq!(store.get(&j.job_id).await.expect("get"), Some(done.clone()));
    // Terminal statuses never change.
    let err = store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Failed),
            Change::to(JobStatus::Completed, at(7)),
        )
        .await
        .expect_err("terminal");
    assert!(matches!(err, StoreError::Illegal { .. }), "{err}");
    let err = store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Running),
            Change::to(JobStatus::Completed, at(7)),
        )
        .await
        .expect_err("already failed");
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                current: JobStatus::Failed,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.heartbeat(&j.job_id, "i-1", None, at(8)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .transition(
                &Job::new_id(),
                Expect::status(JobStatus::Pending),
                Change::to(JobStatus::Failed, at(8))
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn two_actors_racing_one_wins(store: Arc<dyn JobStore>) {
    for round in 0..5 {
        let j = job("key-a", at(round), None);
        create(&*store, &j).await;
        store
            .transition(
                &j.job_id,
                Expect::status(JobStatus::Pending),
                Change::to(JobStatus::Provisioning, at(round)),
            )
            .await
            .expect("provision");
        let claim = |instance: &'static str| {
            let store = Arc::clone(&store);
            let id = j.job_id.clone();
            tokio::spawn(async move {
                store
                    .transition(
                        &id,
                        Expect::status(JobStatus::Provisioning),
                        Change::to(JobStatus::Running, at(100)).instance(instance),
                    )
                    .await
            })
        };
        let (a, b) = tokio::join!(claim("i-a"), claim("i-b"));
        let results = [a.expect("join"), b.expect("join")];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        let loser = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("a loser");
        assert!(
            matches!(
                loser,
                StoreError::Conflict {
                    current: JobStatus::Running,
                    ..
                }
            ),
            "{loser}"
        );
        let winner = results
            .iter()
            .find_map(|r| r.as_ref().ok())
            .expect("a winner");
        let stored = store.get(&j.job_id).await.expect("get").expect("exists");
        assert_eq!(stored.instance_id, winner.instance_id);
    }
}

async fn listing_is_per_owner_newest_first_with_cursors(store: Arc<dyn JobStore>) {
    let mut mine = Vec::new();
    for i in 0..5 {
        let j = job("key-mine", at(i * 1000), None);
        create(&*store, &j).await;
        mine.push(j);
    }
    for i in 0..2 {
        create(&*store, &job("key-theirs", at(i * 1000 + 500), None)).await;
    }
    store
        .transition(
            &mine[1].job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Cancelled, at(9000)),
        )
        .await
        .expect("cancel");
    let owner = Owner("key-mine".into());
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_by_owner(&owner, None, 2, cursor.as_ref())
            .await
            .expect("list");
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.iter().map(|j| j.job_id.clone()));
        pages += 1;
        match page.next {
            Some(c) => cursor = Some(Cursor::decode(&c.encode()).expect("cursor")),
            None => break,
        }
        assert!(pages < 10, "cursor loops");
    }
    let expected: Vec<_> = mine.iter().rev().map(|j| j.job_id.clone()).collect();
    assert_eq!(seen, expected);
    let cancelled = store
        .list_by_owner(&owner, Some(JobStatus::Cancelled), 10, None)
        .await
        .expect("by status");
    assert_eq!(cancelled.jobs.len(), 1);
    assert_eq!(cancelled.jobs[0].job_id, mine[1].job_id);
    // By status, across owners, oldest first (the reaper's view).
    let pending = store
        .list_by_status(JobStatus::Pending, 100, None)
        .await
        .expect("pending");
    let times: Vec<_> = pending.jobs.iter().map(|j| j.created_at).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    assert_eq!(pending.jobs.len(), 6);
}

async fn cancel_requests_are_recorded_once(store: Arc<dyn JobStore>) {
    let j = job("key-a", at(0), None);
    create(&*store, &j).await;
    let c = store
        .request_cancel(&j.job_id, at(1))
        .await
        .expect("cancel");
    assert_eq!(c.cancel_requested_at, Some(at(1)));
    assert_eq!(c.status, JobStatus::Pending);
    let again = store.request_cancel(&j.job_id, at(2)).await.expect("again");
    assert_eq!(again.cancel_requested_at, Some(at(1)));
    store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Cancelled, at(3)),
        )
        .await
        .expect("cancelled");
    assert!(matches!(
        store.request_cancel(&j.job_id, at(4)).await,
        Err(StoreError::Conflict {
            current: JobStatus::Cancelled,
            ..
        })
    ));
    assert!(matches!(
        store.request_cancel(&Job::new_id(), at(4)).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn expired_records_read_as_gone(store: Arc<dyn JobStore>) {
    let old = Timestamp::from_unix_millis(T0 - 40 * 24 * 3_600_000);
    let mut j = job("key-a", old, None);
    j.ttl = old.plus(Duration::from_secs(3600)).unix_seconds();
    create(&*store, &j).await;
    assert_eq!(store.get(&j.job_id).await.expect("get"), None);
    let page = store
        .list_by_owner(&Owner("key-a".into()), None, 10, None)
        .await
        .expect("list");
    assert!(page.jobs.iter().all(|x| x.job_id != j.job_id));
}

/// DynamoDB's transaction conflicts and lost answers, injected at 30 % each into creates and
/// finishes, retried: every job is stored once and finished once, so the limit still holds
/// exactly and the count comes back to zero.
async fn injected_faults_are_retried_and_each_write_happens_once(store: Arc<dyn JobStore>) {
    use job_model::store::fault::{Call, Faulty, Rule};
    use job_model::store::retry::{Backoff, Retrying};
    let faulty = Arc::new(
        Faulty::new(store.clone(), 7)
            .with(
                Call::Create,
                Rule::Random {
                    before: 0.3,
                    after: 0.3,
                },
            )
            .with(
                Call::Finish,
                Rule::Random {
                    before: 0.3,
                    after: 0.3,
                },
            ),
    );
    let retrying = Retrying::new(faulty.clone(), Backoff::REQUEST);
    let mut made = Vec::new();
    for i in 0..12 {
        let key = format!("k{i}");
        let j = job("key-a", at(i), Some(&key));
        match retrying.create(&j, Some(10)).await {
            Ok(Created::New(stored)) => {
                assert_eq!(stored.job_id, j.job_id);
                made.push(stored);
            }
            Ok(Created::Existing(e)) => panic!("job {i} read as existing: {e:?}"),
            Err(StoreError::LimitReached { limit: 10 }) => assert!(i >= 10, "refused job {i}"),
            Err(e) => panic!("job {i}: {e}"),
        }
    }
    assert_eq!(made.len(), 10);
    for j in &made {
        let done = retrying
            .transition(
                &j.job_id,
                Expect::job(j),
                Change::to(JobStatus::Cancelled, at(100)),
            )
            .await
            .expect("finish");
        assert_eq!(done.status, JobStatus::Cancelled);
        assert_eq!(done.version, j.version + 1, "written once");
    }
    // Ten slots free again, and no more.
    for i in 0..11 {
        let j = job("key-a", at(200 + i), None);
        let r = retrying.create(&j, Some(10)).await;
        if i < 10 {
            assert!(matches!(r, Ok(Created::New(_))), "{i}: {r:?}");
        } else {
            assert!(matches!(r, Err(StoreError::LimitReached { .. })), "{r:?}");
        }
    }
    assert_eq!(
        store
            .reconcile_active(Duration::ZERO)
            .await
            .expect("reconcile"),
        None,
        "the count is exact"
    );
    let c = faulty.injected(Call::Create);
    let f = faulty.injected(Call::Finish);
    assert!(
        c.before > 0 && c.after > 0 && f.before > 0 && f.after > 0,
        "{c:?} {f:?}"
    );
}

/// The sealed URLs leave the record when the job ends, while everything else stays readable.
async fn sealed_urls_leave_the_record_when_the_job_ends(store: Arc<dyn JobStore>) {
    let j = job("key-a", at(0), None);
    create(&*store, &j).await;
    let running = store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Provisioning, at(1)),
        )
        .await
        .expect("provision");
    assert_eq!(running.source_secret, b"sealed-source");
    assert_eq!(running.target_secret, b"sealed-target");
    let done = store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Provisioning),
            Change::to(JobStatus::Failed, at(2)).error(ErrorBody::new("x", "y")),
        )
        .await
        .expect("fail");
    let read = store.get(&j.job_id).await.expect("get").expect("job");
    for shown in [&done, &read] {
        assert!(shown.source_secret.is_empty() && shown.target_secret.is_empty());
        assert_eq!(shown.source_display, j.source_display);
        assert_eq!(shown.status, JobStatus::Failed);
    }
}

/// A job whose worker was lost goes back to `pending` for its next worker: the attempt is
/// counted on, the error says why, the secrets stay (the next worker needs them), the first
/// start stays, it still counts as active, and a stale writer of the attempt before loses.
async fn a_lost_worker_gives_way_to_the_next_attempt(store: Arc<dyn JobStore>) {
    let j = job("key-a", at(0), None);
    assert_eq!(create(&*store, &j).await.attempt, 1);
    let claim = |instance: &'static str, t: i64| {
        let store = store.clone();
        let id = j.job_id.clone();
        async move {
            store
                .transition(
                    &id,
                    Expect::status(JobStatus::Pending),
                    Change::to(JobStatus::Provisioning, at(t)).worker(job_model::WorkerRun {
                        instance_id: instance.into(),
                        instance_type: "c5.xlarge".into(),
                        market: if t == 1 {
                            job_model::Market::Spot
                        } else {
                            job_model::Market::OnDemand
                        },
                        on_demand_because: (t > 1).then(|| "reclaimed before".to_owned()),
                        launched_at: at(t),
                    }),
                )
                .await
                .expect("provision");
            store
                .transition(
                    &id,
                    Expect::status(JobStatus::Provisioning),
                    Change::to(JobStatus::Running, at(t + 1)).instance(instance),
                )
                .await
                .expect("claim")
        }
    };
    let first = claim("i-first", 1).await;
    let retried = store
        .transition(
            &j.job_id,
            Expect::job(&first),
            Change::retry(at(5), 2, ErrorBody::new("heartbeat_lost", "worker lost")),
        )
        .await
        .expect("next attempt");
    assert_eq!((retried.status, retried.attempt), (JobStatus::Pending, 2));
    // The first worker, late, cannot record an outcome or a heartbeat any more.
    assert!(matches!(
        store
            .transition(
                &j.job_id,
                Expect::job(&first),
                Change::to(JobStatus::Completed, at(6)),
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store
        .heartbeat(&j.job_id, "i-first", None, at(6))
        .await
        .is_err());
    let second = claim("i-second", 7).await;
    let read = store.get(&j.job_id).await.expect("get").expect("job");
    for shown in [&second, &read] {
        assert_eq!(shown.attempt, 2);
        assert_eq!(shown.instance_id.as_deref(), Some("i-second"));
        assert_eq!(shown.started_at, Some(at(2)), "the first claim's start");
        assert_eq!(shown.source_secret, b"sealed-source");
        assert_eq!(
            shown.error.as_ref().map(|e| e.code.as_str()),
            Some("heartbeat_lost")
        );
        // Both workers are on the record, first first, with how each was bought.
        let workers: Vec<_> = shown
            .workers
            .iter()
            .map(|w| {
                (
                    w.instance_id.as_str(),
                    w.market,
                    w.on_demand_because.as_deref(),
                    w.launched_at,
                )
            })
            .collect();
        assert_eq!(
            workers,
            vec![
                ("i-first", job_model::Market::Spot, None, at(1)),
                (
                    "i-second",
                    job_model::Market::OnDemand,
                    Some("reclaimed before"),
                    at(7)
                ),
            ]
        );
    }
    // The first worker's outcome, written late against the status alone, would land on the
    // second worker's attempt: held by the first, it is refused; the second's own is not.
    assert!(matches!(
        store
            .transition(
                &j.job_id,
                Expect::status(JobStatus::Running).held_by("i-first"),
                Change::to(JobStatus::Failed, at(8)),
            )
            .await,
        Err(StoreError::Conflict {
            current: JobStatus::Running,
            ..
        })
    ));
    let progressed = store
        .transition(
            &j.job_id,
            Expect::status(JobStatus::Running).held_by("i-second"),
            Change::retry(at(9), 3, ErrorBody::new("worker_stopped", "stopped")),
        )
        .await
        .expect("the holder's own write");
    assert_eq!(
        (progressed.status, progressed.attempt),
        (JobStatus::Pending, 3)
    );
    // Still one active job: the limit counts it once.
    let other = job("key-a", at(8), None);
    assert!(matches!(
        store.create(&other, Some(1)).await,
        Err(StoreError::LimitReached { limit: 1 })
    ));
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::sqlite();
                    super::$name(f.store.clone()).await;
                }
            )*
        }
        mod dynamodb_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::dynamo().await;
                    super::$name(f.store.clone()).await;
                }
            )*
        }
    };
}

contract!(
    created_job_reads_back_unchanged,
    idempotency_key_returns_the_first_job,
    concurrency_limit_counts_active_jobs,
    life_cycle_and_conditions,
    two_actors_racing_one_wins,
    listing_is_per_owner_newest_first_with_cursors,
    cancel_requests_are_recorded_once,
    expired_records_read_as_gone,
    injected_faults_are_retried_and_each_write_happens_once,
    sealed_urls_leave_the_record_when_the_job_ends,
    a_lost_worker_gives_way_to_the_next_attempt,
);

/// A count that leaked (a job item gone without its finish, a crash between steps) is brought
/// back to the jobs really active, but not while it is still moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_active_count_is_reconciled_after_a_leak() {
    let moto = moto_harness::Moto::shared();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    let table = moto_harness::unique("jobs");
    let store = DynamoStore::new(client.clone(), table.clone());
    store.create_table().await.expect("create table");
    let mut jobs = vec![];
    for i in 0..3 {
        jobs.push(create(&store, &job("key-a", at(i), None)).await);
    }
    store
        .transition(
            &jobs[0].job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Cancelled, at(10)),
        )
        .await
        .expect("cancel");
    // The leak: a job's item deleted while it was active.
    client
        .delete_item()
        .table_name(&table)
        .key(
            "job_id",
            aws_sdk_dynamodb::types::AttributeValue::S(jobs[1].job_id.clone()),
        )
        .send()
        .await
        .expect("delete");
    // Just changed: left alone.
    assert_eq!(
        store
            .reconcile_active(Duration::from_secs(3600))
            .await
            .expect("quiet"),
        None
    );
    // The first pass only notes the difference (listings can catch a job moving between
    // statuses); the second, finding the same, corrects it.
    assert_eq!(
        store.reconcile_active(Duration::ZERO).await.expect("note"),
        None
    );
    let fixed = store
        .reconcile_active(Duration::ZERO)
        .await
        .expect("reconcile");
    assert_eq!(fixed, Some(job_model::ReconciledCount { was: 2, now: 1 }));
    assert_eq!(
        store.reconcile_active(Duration::ZERO).await.expect("again"),
        None
    );
    // The slot is free: a limit of 2 admits one more, then refuses.
    assert!(store
        .create(&job("key-a", at(20), None), Some(2))
        .await
        .is_ok());
    assert!(matches!(
        store.create(&job("key-a", at(21), None), Some(2)).await,
        Err(StoreError::LimitReached { limit: 2 })
    ));
}

/// Two processes sharing one SQLite file (two connections here) race for one claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_shared_by_two_connections_lets_one_claim_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.db");
    let a: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&path).expect("open a"));
    let b: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&path).expect("open b"));
    for round in 0..10 {
        let j = job("key-a", at(round), None);
        create(&*a, &j).await;
        a.transition(
            &j.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Provisioning, at(round)),
        )
        .await
        .expect("provision");
        let claim = |store: Arc<dyn JobStore>, instance: &'static str| {
            let id = j.job_id.clone();
            tokio::spawn(async move {
                store
                    .transition(
                        &id,
                        Expect::status(JobStatus::Provisioning),
                        Change::to(JobStatus::Running, at(100)).instance(instance),
                    )
                    .await
            })
        };
        let (ra, rb) = tokio::join!(
            claim(Arc::clone(&a), "local-a"),
            claim(Arc::clone(&b), "local-b")
        );
        let oks = [ra.expect("join"), rb.expect("join")]
            .iter()
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(oks, 1, "round {round}");
        // Both connections see the same winner.
        assert_eq!(
            a.get(&j.job_id).await.expect("a").map(|j| j.instance_id),
            b.get(&j.job_id).await.expect("b").map(|j| j.instance_id)
        );
    }
}

/// The operator's scan of the jobs table (`Items[].{JobId:job_id.S,Status:status.S,…}`) lists
/// jobs only: the active-job counter and the idempotency records live in the ledger table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_jobs_table_holds_jobs_only() {
    let moto = moto_harness::Moto::shared();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    let table = moto_harness::unique("jobs");
    let store = DynamoStore::new(client.clone(), table.clone());
    store.create_table().await.expect("create tables");
    assert_eq!(store.ledger_table(), format!("{table}-ledger"));
    let first = create(&store, &job("key-a", at(0), Some("idem-1"))).await;
    create(&store, &job("key-b", at(1), None)).await;
    assert!(matches!(
        store.create(&job("key-a", at(2), Some("idem-1")), Some(10)).await,
        Ok(Created::Existing(j)) if j.job_id == first.job_id
    ));
    store
        .transition(
            &first.job_id,
            Expect::status(JobStatus::Pending),
            Change::to(JobStatus::Cancelled, at(3)),
        )
        .await
        .expect("cancel");
    let scan = |t: String| {
        let client = client.clone();
        async move {
            client
                .scan()
                .table_name(t)
                .send()
                .await
                .expect("scan")
                .items
                .unwrap_or_default()
        }
    };
    let jobs = scan(table.clone()).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for item in &jobs {
        assert!(
            item.get("status").and_then(|v| v.as_s().ok()).is_some()
                && item.get("job_id").is_some(),
            "not a job: {item:?}"
        );
    }
    let mut ledger: Vec<String> = scan(store.ledger_table().to_owned())
        .await
        .iter()
        .map(|i| {
            i["pk"]
                .as_s()
                .expect("pk")
                .split('#')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    ledger.sort();
    assert_eq!(ledger, ["active-jobs", "idem"]);
    let active = scan(store.ledger_table().to_owned())
        .await
        .into_iter()
        .find(|i| i["pk"].as_s().is_ok_and(|k| k == "active-jobs"))
        .expect("counter");
    assert_eq!(active["active_jobs"].as_n().expect("n"), "1");
}

//! The replication protocol client against a real server: SCRAM over TCP, a logical slot that
//! exports its snapshot, and the exact split it promises (the snapshot sees every change before
//! the slot's consistent point, the slot streams every change after it).

mod common;

use common::url;
use pg_harness::{Cluster, Options};
use replicator_core::connect::connect;
use replicator_core::replication::ReplicationSession;
use replicator_core::sync::{self, SyncNames};
use replicator_core::{ConnUrl, Side};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_slot_snapshot_sees_exactly_what_came_before_its_consistent_point() {
    let src = Cluster::start(&Options {
        logical: true,
        password: Some("s3cret pass".into()),
        ..Options::default()
    });
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'before');",
    );
    let source = url(&src, "app");
    rt().block_on(async {
        let plain = connect(&source, Side::Source).await.expect("connect");
        let target = ConnUrl::parse_with_env("postgresql://u@h/x", &|_| None).expect("url");
        let names = SyncNames::for_target(&target);
        sync::create_publication(
            &plain,
            &names,
            &[replicator_core::QualName::new("public", "t")],
            &sync::publication_comment(&target, None),
        )
        .await
        .expect("publication");
        let (snapshot, created) = sync::create_slot(&source, &plain, &names)
            .await
            .expect("slot over SCRAM");
        assert_eq!(created.slot_name, names.slot);
        assert!(created.consistent_point.contains('/'), "{created:?}");
        assert!(snapshot.is_alive());

        // A change after the slot: invisible to the snapshot, streamed by the slot.
        plain
            // synchronous_commit on: decoding reads only flushed WAL, and the harness runs
            // with it off.
            .batch_execute(
                "SET synchronous_commit = on; \
                 INSERT INTO public.t VALUES (2, 'after'); UPDATE public.t SET v = 'changed' WHERE id = 1",
            )
            .await
            .expect("write");
        let reader = connect(&source, Side::Source).await.expect("reader");
        replicator_core::snapshot::import(&reader, snapshot.name())
            .await
            .expect("import the slot's snapshot");
        let rows: Vec<(i32, String)> = reader
            .query("SELECT id, v FROM public.t ORDER BY id", &[])
            .await
            .expect("read")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(rows, vec![(1, "before".to_owned())]);
        reader.batch_execute("COMMIT").await.expect("commit");

        drop(snapshot);
        let changes: i64 = plain
            .query_one(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
                 'proto_version', '1', 'publication_names', $2)",
                &[&names.slot, &names.publication],
            )
            .await
            .expect("peek")
            .get(0);
        // BEGIN, RELATION, INSERT, UPDATE, COMMIT.
        assert_eq!(changes, 5, "the slot streamed {changes} messages");

        let dropped = sync::stop(&plain, None, &names).await.expect("stop");
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert_eq!(
            sync::source_objects(&plain, &names).await.expect("objects"),
            (false, false)
        );
    });
}

#[test]
fn a_wrong_password_and_a_server_without_logical_wal_say_so() {
    let src = Cluster::start(&Options {
        logical: false,
        password: Some("right".into()),
        ..Options::default()
    });
    let mut bad = url(&src, "postgres");
    bad.password = Some(replicator_core::Secret::new("wrong"));
    rt().block_on(async {
        let err = ReplicationSession::connect(&bad)
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(!text.contains("wrong"), "no password in errors: {text}");

        let good = url(&src, "postgres");
        let mut session = ReplicationSession::connect(&good).await.expect("connect");
        let err = session
            .create_logical_slot("seren_test")
            .await
            .expect_err("wal_level=replica");
        assert!(err.to_string().contains("wal_level"), "{err}");
        let plain = connect(&good, Side::Source).await.expect("connect");
        let checks = replicator_core::checks::replication(&plain, None, None).await;
        assert!(
            checks
                .iter()
                .any(|c| c.failed() && c.detail.contains("wal_level = replica")),
            "{checks:?}"
        );
    });
}

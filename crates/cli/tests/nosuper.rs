//! A migration with no superuser anywhere, as on managed services: the source role has only
//! `LOGIN REPLICATION` and owns its database and tables; the target role has `CREATEDB` and, from
//! PostgreSQL 16 on, `pg_create_subscription`. On 18 `init` copies and replicates, `verify`
//! finds every table equal after writes and `cutover` freezes the role and detaches; the same
//! across majors, as the upgrades people make between managed services (12 → 16, 14 → 17:
//! the two oldest sources' replication protocol, the two targets where the subscription right
//! is a role of its own besides 18). On 15,
//! where only a superuser may create a subscription, `init --sync` refuses before anything is
//! made, naming the privilege, and a plain `init` copies, says that replication is off and why,
//! and `verify` finds the copy equal.

use std::process::Output;

mod common;

use common::{assert_nothing_made, text};
use pg_harness::{client_bindir, server_bindir, Cluster, Options};

const SOURCE_PW: &str = "src-Secret-7";
const TARGET_PW: &str = "dst-Secret-9";

/// Run the CLI with the client tools of 18.
fn run(source: &str, target: &str, args: &[&str]) -> Output {
    common::run_with(&client_bindir(), source, target, args)
}

/// The application's data, made by the unprivileged owner itself (hstore first: a trusted
/// extension from 13 on, which the owner creates itself; on 12 the superuser does, as a
/// managed service's console would).
const SCHEMA: &str = "
CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
                       attrs hstore, balance numeric(12,2), opened date);
INSERT INTO accounts (name, attrs, balance, opened)
  SELECT 'a' || g, hstore('k', g::text), g * 1.5, DATE '2020-01-01' + g FROM generate_series(1, 3000) g;
CREATE TABLE entries (account_id bigint REFERENCES accounts, at timestamptz, amount numeric,
                      PRIMARY KEY (account_id, at));
INSERT INTO entries SELECT g % 3000 + 1, TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * interval '1 minute', g
  FROM generate_series(1, 20000) g;
CREATE INDEX entries_at ON entries (at);
CREATE SEQUENCE invoice_no START 1000;
SELECT nextval('invoice_no') FROM generate_series(1, 12);
SELECT lo_from_bytea(0, 'an attachment');
";

/// A source and a target of `major` with password authentication, each with an unprivileged
/// role `app_owner` (the same name on both, as a restore that keeps ownership needs).
fn servers(major: u32) -> (Cluster, Cluster, String, String) {
    servers_of(major, major)
}

/// [`servers`] with a source of `source_major` and a target of `target_major`.
fn servers_of(source_major: u32, target_major: u32) -> (Cluster, Cluster, String, String) {
    servers_with(source_major, target_major, true)
}

/// [`servers_of`]; with `own_public`, the source's schema public belongs to `app_owner` and
/// nobody else may use it (as on many managed services), else it is as initdb made it (the
/// bootstrap superuser's; before 15 everyone may create in it).
fn servers_with(
    source_major: u32,
    target_major: u32,
    own_public: bool,
) -> (Cluster, Cluster, String, String) {
    let major = target_major;
    let src = Cluster::start(&Options {
        server_bindir: Some(server_bindir(source_major)),
        password: Some("su-src".into()),
        ..Options::source()
    });
    let dst = Cluster::start(&Options {
        server_bindir: Some(server_bindir(target_major)),
        password: Some("su-dst".into()),
        ..Options::target()
    });
    src.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE app_owner LOGIN REPLICATION PASSWORD '{SOURCE_PW}'"
        ),
    );
    src.psql("postgres", "CREATE DATABASE app OWNER app_owner");
    // The database's own properties, which its owner may give on the target too.
    src.psql(
        "postgres",
        "ALTER DATABASE app SET timezone = 'Asia/Tokyo'; \
         ALTER DATABASE app SET search_path = \"$user\", public; \
         COMMENT ON DATABASE app IS 'accounts'; \
         REVOKE TEMPORARY ON DATABASE app FROM PUBLIC",
    );
    if own_public {
        src.psql("app", "REVOKE ALL ON SCHEMA public FROM PUBLIC");
        src.psql("app", "ALTER SCHEMA public OWNER TO app_owner");
    }
    if source_major < 13 {
        src.psql("app", "CREATE EXTENSION hstore");
    }
    let schema = if source_major < 13 {
        SCHEMA.to_owned()
    } else {
        format!("CREATE EXTENSION hstore; {SCHEMA}")
    };
    let out = src
        .psql_command("app")
        .args(["-U", "app_owner", "-c", &schema])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{}", text(&out));
    let subscribe = if major >= 16 {
        "GRANT pg_create_subscription TO app_owner;"
    } else {
        ""
    };
    dst.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE app_owner LOGIN CREATEDB PASSWORD '{TARGET_PW}'; {subscribe}"
        ),
    );
    let s = format!(
        "postgresql://app_owner:{SOURCE_PW}@127.0.0.1:{}/app?sslmode=disable",
        src.port()
    );
    let t = format!(
        "postgresql://app_owner:{TARGET_PW}@127.0.0.1:{}/app?sslmode=disable",
        dst.port()
    );
    (src, dst, s, t)
}

#[test]
fn on_18_init_sync_verify_and_cutover_work_without_a_superuser() {
    let (src, dst, s, t) = servers(18);
    migrate_without_a_superuser(&src, &dst, &s, &t);
}

#[test]
fn across_majors_init_sync_verify_and_cutover_work_without_a_superuser() {
    for (from, to) in [(12, 16), (13, 17), (14, 17), (17, 17)] {
        let (src, dst, s, t) = servers_of(from, to);
        eprintln!("== {from} -> {to}");
        migrate_without_a_superuser(&src, &dst, &s, &t);
    }
}

/// validate, init with replication, writes, verify, cutover and its undo, all as `app_owner`.
fn migrate_without_a_superuser(src: &Cluster, dst: &Cluster, s: &str, t: &str) {
    let (s, t) = (s.to_owned(), t.to_owned());
    let out = run(&s, &t, &["validate"]);
    let all = text(&out);
    assert!(out.status.success(), "validate: {all}");

    // From 16 the subscription of a role that is not a superuser needs a password in its
    // connection string: a --sync-source-url without one is refused before anything is made.
    if dst
        .psql("postgres", "SHOW server_version_num")
        .parse::<u32>()
        .expect("a version number")
        >= 160000
    {
        let bare = format!(
            "postgresql://app_owner@127.0.0.1:{}/app?sslmode=disable",
            src.port()
        );
        let out = run(
            &s,
            &t,
            &[
                "init",
                "--sync",
                "--sync-source-url",
                &bare,
                "--progress",
                "none",
            ],
        );
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("would hold no password"), "{all}");
        assert_nothing_made(src, dst, "app");
    }

    let out = run(&s, &t, &["init", "--sync", "--progress", "none"]);
    let all = text(&out);
    assert!(out.status.success(), "init: {all}");
    assert!(all.contains("replicating:"), "{all}");
    assert!(
        !all.contains(SOURCE_PW) && !all.contains(TARGET_PW),
        "{all}"
    );
    assert_eq!(
        dst.psql("app", "SELECT subowner::regrole::text FROM pg_subscription"),
        "app_owner",
        "the subscription belongs to the unprivileged role"
    );

    let properties = "SELECT shobj_description(d.oid, 'pg_database'), d.datacl::text, \
                      (SELECT setconfig::text FROM pg_db_role_setting \
                       WHERE setdatabase = d.oid AND setrole = 0) \
                      FROM pg_database d WHERE datname = 'app'";
    assert_eq!(
        dst.psql("postgres", properties),
        src.psql("postgres", properties),
        "the database's comment, privileges and settings"
    );

    src.psql_command("app")
        .args([
            "-U",
            "app_owner",
            "-c",
            "UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0; \
             DELETE FROM entries WHERE amount::int % 11 = 0; \
             INSERT INTO accounts (name) VALUES ('late'); \
             SELECT nextval('invoice_no');",
        ])
        .output()
        .expect("writes");
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert!(text(&out).contains("tables equal"), "{}", text(&out));

    // Another application role, which app_owner may neither make read-only nor disconnect:
    // refused before any role is frozen.
    src.psql("postgres", "CREATE ROLE clerk LOGIN");
    let out = run(
        &s,
        &t,
        &["cutover", "--role", "app_owner", "--role", "clerk"],
    );
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("clerk: may not make it read-only"), "{all}");
    assert_eq!(
        src.psql("postgres", "SELECT count(*) FROM pg_db_role_setting"),
        src.psql(
            "postgres",
            "SELECT count(*) FROM pg_db_role_setting WHERE setrole = 0"
        ),
        "no role was frozen"
    );

    let out = run(&s, &t, &["cutover", "--role", "app_owner"]);
    let all = text(&out);
    assert!(out.status.success(), "cutover: {all}");
    assert_eq!(
        src.psql("app", "SELECT last_value FROM invoice_no"),
        dst.psql("app", "SELECT last_value FROM invoice_no")
    );
    assert_eq!(
        dst.psql("app", "SELECT count(*) FROM pg_largeobject_metadata"),
        "1"
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM pg_subscription"), "0");
    assert_eq!(
        src.psql("app", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    let out = run(&s, &t, &["cutover", "--role", "app_owner", "--undo"]);
    assert!(out.status.success(), "undo: {}", text(&out));
    for (side, log) in [("source", src.log()), ("target", dst.log())] {
        assert!(
            !log.contains(SOURCE_PW) && !log.contains(TARGET_PW),
            "a password in the {side}'s server log"
        );
    }
}

#[test]
fn on_15_the_missing_subscription_right_is_named_before_anything_is_made() {
    let (src, dst, s, t) = servers(15);
    copy_only_without_the_subscription_right(&src, &dst, &s, &t);
}

#[test]
fn before_16_across_majors_the_missing_subscription_right_is_named() {
    // The schema public as initdb made it: the bootstrap superuser's, whom `pg_dump` names.
    for (from, to) in [(13, 13), (13, 14)] {
        let (src, dst, s, t) = servers_with(from, to, false);
        eprintln!("== {from} -> {to}, public as initdb made it");
        if from != to {
            // Only the schema's owner may comment on it: the target keeps its own, and says so.
            src.psql("app", "COMMENT ON SCHEMA public IS 'the application'");
            let out = run(&s, &t, &["validate"]);
            assert!(
                text(&out).contains("keeps the target's comment"),
                "{}",
                text(&out)
            );
        }
        copy_only_without_the_subscription_right(&src, &dst, &s, &t);
        assert_eq!(
            dst.psql(
                "app",
                "SELECT nspowner = 10 FROM pg_namespace WHERE nspname = 'public'"
            ),
            "t",
            "public keeps the target's default owner"
        );
    }
}

#[test]
fn before_15_a_public_schema_the_target_role_cannot_own_is_named_before_anything_is_made() {
    let (src, dst, s, t) = servers_of(13, 14);
    let out = run(&s, &t, &["init", "--progress", "none"]);
    let all = text(&out);
    assert!(!out.status.success(), "init must refuse: {all}");
    assert!(
        all.contains("schema public") && all.contains("ALTER SCHEMA public OWNER TO"),
        "names the problem and the way out: {all}"
    );
    assert_eq!(all.matches("error:").count(), 1, "{all}");
    assert_nothing_made(&src, &dst, "app");
    let out = run(&s, &t, &["validate"]);
    assert!(
        text(&out).contains("target.public_schema"),
        "validate reports it too: {}",
        text(&out)
    );

    // The way out it names: a superuser makes the database and hands the schema over.
    dst.psql("postgres", "CREATE DATABASE app OWNER app_owner");
    dst.psql("app", "ALTER SCHEMA public OWNER TO app_owner");
    let out = run(&s, &t, &["init", "--progress", "none"]);
    assert!(out.status.success(), "init: {}", text(&out));
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    let acl = "SELECT pg_get_userbyid(nspowner) || ' ' || coalesce(nspacl::text, '-') \
               FROM pg_namespace WHERE nspname = 'public'";
    assert_eq!(src.psql("app", acl), dst.psql("app", acl));
}

/// Owners the target role may not give objects to (it is no member of them): the schema public
/// handed to the bootstrap superuser on a 15+ source (as pagila does), and a table of a role of
/// its own. The restore would fail halfway at its `ALTER … OWNER TO`; `init` names them before
/// anything is made, and copies with `--no-owner`; the table app_owner may read but not publish
/// is copied and left out of replication.
#[test]
fn owners_the_target_role_may_not_become_are_named_before_anything_is_made() {
    let (src, dst, s, t) = servers_with(17, 17, false);
    src.psql("app", "ALTER SCHEMA public OWNER TO CURRENT_USER");
    for c in [&src, &dst] {
        c.psql("postgres", "CREATE ROLE reporting");
    }
    src.psql(
        "app",
        "CREATE TABLE public.report (id int PRIMARY KEY); \
         INSERT INTO public.report SELECT generate_series(1, 10); \
         ALTER TABLE public.report OWNER TO reporting; \
         GRANT SELECT ON public.report TO app_owner",
    );
    let out = run(&s, &t, &["init", "--progress", "none"]);
    let all = text(&out);
    assert!(!out.status.success(), "init must refuse: {all}");
    assert!(
        all.contains("may not give objects to") && all.contains("reporting"),
        "{all}"
    );
    assert!(all.contains("--no-owner"), "names the way out: {all}");
    assert_nothing_made(&src, &dst, "app");

    // app_owner may read public.report but not publish it (only its owner may): it is copied
    // and left out of replication, and the rest is replicated.
    let out = run(&s, &t, &["init", "--no-owner", "--progress", "none"]);
    let all = text(&out);
    assert!(out.status.success(), "init --no-owner: {all}");
    assert!(
        all.contains("copied but not replicated: public.report, which the source role may read but not publish"),
        "{all}"
    );
    assert!(all.contains("replicating:"), "{all}");
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
}

#[test]
fn on_12_a_failed_copy_leaves_no_database_and_the_extension_is_named_first() {
    // Before 13 no extension is trusted: the unprivileged role cannot create hstore, which is
    // said before the copy starts; the copy then fails and removes the database it made.
    let (src, dst, s, t) = servers_with(12, 12, false);
    let out = run(&s, &t, &["init", "--progress", "none"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("not marked trusted"), "{all}");
    assert!(!all.contains("could not be removed"), "{all}");
    assert_nothing_made(&src, &dst, "app");
}

/// On a target before 16, where only a superuser may create a subscription: `init --sync`
/// refuses before anything is made, naming it; a plain `init` copies as the unprivileged
/// owner, says why replication is off, and `verify` finds the copy equal.
fn copy_only_without_the_subscription_right(src: &Cluster, dst: &Cluster, s: &str, t: &str) {
    let (s, t) = (s.to_owned(), t.to_owned());
    let out = run(&s, &t, &["init", "--sync", "--progress", "none"]);
    let all = text(&out);
    assert!(!out.status.success(), "init --sync must refuse: {all}");
    assert!(all.contains("superuser"), "{all}");
    assert_nothing_made(src, dst, "app");

    let out = run(&s, &t, &["init", "--progress", "none"]);
    let all = text(&out);
    assert!(out.status.success(), "init: {all}");
    assert!(
        all.contains("superuser"),
        "says why replication is off: {all}"
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM pg_subscription"), "0");
    assert_eq!(
        src.psql("app", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    let out = run(&s, &t, &["verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert_eq!(
        dst.psql(
            "app",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'accounts'"
        ),
        "app_owner"
    );
}

//! The command line as a user meets it: exit codes, one-line errors, nothing half-done, and no
//! password in any output.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use pg_harness::{bindir, Cluster, Options};

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgres-seren-replicator"));
    cmd.stdin(Stdio::null())
        .env_remove("SEREN_SOURCE_URL")
        .env_remove("SEREN_TARGET_URL");
    cmd.env("SEREN_PG_BINDIR", bindir());
    cmd
}

fn init(source: &str, target: &str, extra: &[&str]) -> Output {
    cli()
        .arg("init")
        .args(extra)
        .env("SEREN_SOURCE_URL", source)
        .env("SEREN_TARGET_URL", target)
        .output()
        .expect("run the CLI")
}

/// The error line; asserts the run failed with exactly one `error:` line.
fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    errors[0].to_owned()
}

fn database_exists(c: &Cluster, db: &str) -> bool {
    c.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) == "1"
}

#[test]
fn malformed_urls_are_refused_before_anything_happens() {
    let out = init("mysql://u@h/db", "postgresql://u@h/db", &[]);
    let line = error_line(&out);
    assert!(
        line.contains("invalid source URL") && line.contains("postgresql://"),
        "{line}"
    );
    let out = init("postgresql://u@h/db", "postgresql://u:pw@h:70000/db", &[]);
    let line = error_line(&out);
    assert!(
        line.contains("invalid target URL") && line.contains("port"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unreachable_and_silent_hosts_fail_with_a_reason() {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let out = init(
        &format!("postgresql://u@127.0.0.1:{port}/db"),
        "postgresql://u@127.0.0.1:1/db",
        &[],
    );
    let line = error_line(&out);
    assert!(
        line.contains("cannot connect to the") && line.contains("refused"),
        "{line}"
    );

    // A server that accepts and never answers: the connect timeout ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let url = format!("postgresql://u@127.0.0.1:{port}/db?connect_timeout=2&sslmode=disable");
    let started = std::time::Instant::now();
    let out = init(&url, &url, &[]);
    let line = error_line(&out);
    assert!(line.contains("timed out after 2 s"), "{line}");
    assert!(started.elapsed().as_secs() < 20);
    drop(silent);
}

#[test]
fn wrong_password_is_reported_and_no_password_is_ever_printed() {
    let secret = "Sup3r;Secret&&$(pw)";
    let src = Cluster::start(&Options {
        password: Some(secret.into()),
        ..Options::source()
    });
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g;");
    let good = src.url("app");
    let bad = good.replace("Sup3r", "Wrong");

    let out = init(&bad, &dst.url("copy"), &["--progress", "log"]);
    let line = error_line(&out);
    assert!(line.contains("password authentication failed"), "{line}");
    assert!(!database_exists(&dst, "copy"), "nothing created on failure");

    let out = init(&good, &dst.url("copy"), &["--progress", "log"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dst.psql("copy", "SELECT count(*) FROM t"), "100");
    for text in [
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    ] {
        assert!(
            !text.contains("Sup3r") && !text.contains("Secret"),
            "password leaked: {text}"
        );
        assert!(!text.contains("Wrong"));
    }
    assert!(!src.log().contains("Sup3r") && !dst.log().contains("Sup3r"));
}

/// Regression: the harness clones every cluster from one initdb, so they share a system
/// identifier, as a promoted replica or a restored base backup shares its origin's. Such a
/// server is another server, and a database of the same name on it is a valid target.
#[test]
fn a_server_cloned_from_the_source_is_not_the_same_database() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
    );
    let out = init(&src.url("app"), &dst.url("app"), &["--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM t"), "2");
}

#[test]
fn source_equal_to_target_is_refused() {
    let c = Cluster::start(&Options::source());
    c.create_db("app");
    let out = init(&c.url("app"), &c.url("app"), &["--yes", "--drop-existing"]);
    let line = error_line(&out);
    assert!(line.contains("same database"), "{line}");
    assert!(database_exists(&c, "app"), "the source survives");
}

#[test]
fn a_target_older_than_the_source_is_refused() {
    // PostgreSQL 14 (a real server, from the zonky build npm ships) under a 15 source.
    let src = Cluster::start(&Options::source());
    let old = Cluster::start(&Options {
        server_bindir: Some(pg_harness::server_bindir(14)),
        ..Options::target()
    });
    assert!(
        old.psql("postgres", "SHOW server_version")
            .starts_with("14."),
        "the target runs 14"
    );
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let out = init(&src.url("app"), &old.url("app"), &["--yes"]);
    let line = error_line(&out);
    assert!(
        line.contains("the target server runs PostgreSQL 14, older than the source's 15")
            && line.contains("version 15 or newer"),
        "{line}"
    );
    assert!(
        !database_exists(&old, "app"),
        "nothing created on the target"
    );
    let out = validate(&src.url("app"), &old.url("app"));
    assert!(out.contains("fail target.version"), "{out}");
}

/// `validate`'s report (stderr).
fn validate(source: &str, target: &str) -> String {
    let out = cli()
        .arg("validate")
        .env("SEREN_SOURCE_URL", source)
        .env("SEREN_TARGET_URL", target)
        .output()
        .expect("run validate");
    assert!(!out.status.success(), "validate exits 1 on a failed check");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_extension_missing_on_the_target_is_refused() {
    // The source's installation has an extension that the target's lacks.
    let src = Cluster::start(&Options {
        server_bindir: Some(pg_harness::server_bindir_with_extension(
            "seren_probe",
            "CREATE FUNCTION seren_probe() RETURNS int LANGUAGE sql AS 'SELECT 1';",
        )),
        ..Options::source()
    });
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE EXTENSION seren_probe; CREATE EXTENSION hstore; \
         CREATE TABLE t (id int PRIMARY KEY, v int DEFAULT seren_probe())",
    );
    let out = init(&src.url("app"), &dst.url("app"), &["--yes"]);
    let line = error_line(&out);
    assert!(
        line.contains(
            "extension(s) seren_probe used by the source are not available on the target"
        ) && line.contains("install them there first"),
        "{line}"
    );
    assert!(!line.contains("hstore"), "hstore is available: {line}");
    assert!(
        !database_exists(&dst, "app"),
        "nothing created on the target"
    );
    let out = validate(&src.url("app"), &dst.url("app"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("fail target.extensions") && l.contains("seren_probe")),
        "{out}"
    );
}

#[test]
fn missing_pg_dump_is_named_with_the_fix() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    let out = init(
        &src.url("app"),
        &dst.url("copy"),
        &["--pg-bindir", "/nonexistent/bin"],
    );
    let line = error_line(&out);
    assert!(
        line.contains("pg_dump: not found in /nonexistent/bin") && line.contains("install"),
        "{line}"
    );
    assert!(!database_exists(&dst, "copy"));
}

/// `sync --force` copies again with init's engine, so it takes the client tools from the same
/// places: `--pg-bindir`, else SEREN_PG_BINDIR (it once ignored both and ran whatever pg_dump
/// it found).
#[test]
fn sync_force_takes_its_client_tools_from_pg_bindir_or_the_environment() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    let force = |bindir: &str, args: &[&str]| {
        let out = cli()
            .env("SEREN_PG_BINDIR", bindir)
            .env("SEREN_SOURCE_URL", src.url("app"))
            .env("SEREN_TARGET_URL", dst.url("copy"))
            .args(["sync", "--force", "--yes"])
            .args(args)
            .output()
            .expect("run sync --force");
        error_line(&out)
    };
    let line = force("/nonexistent/env-bin", &[]);
    assert!(
        line.contains("pg_dump: not found in /nonexistent/env-bin"),
        "{line}"
    );
    let line = force(
        "/nonexistent/env-bin",
        &["--pg-bindir", "/nonexistent/flag-bin"],
    );
    assert!(
        line.contains("pg_dump: not found in /nonexistent/flag-bin"),
        "the flag wins over the environment: {line}"
    );
    assert!(!database_exists(&dst, "copy"));
}

#[test]
fn non_empty_target_is_refused_then_replaced_on_request() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE fresh (id int PRIMARY KEY); INSERT INTO fresh VALUES (1), (2);",
    );
    dst.create_db("copy");
    dst.psql(
        "copy",
        "CREATE TABLE precious (id int); INSERT INTO precious VALUES (42);",
    );

    let out = init(&src.url("app"), &dst.url("copy"), &[]);
    let line = error_line(&out);
    assert!(
        line.contains("is not empty") && line.contains("--drop-existing"),
        "{line}"
    );
    assert_eq!(
        dst.psql("copy", "SELECT id FROM precious"),
        "42",
        "target untouched"
    );

    // Without a terminal, dropping needs --yes.
    let out = init(&src.url("app"), &dst.url("copy"), &["--drop-existing"]);
    let line = error_line(&out);
    assert!(line.contains("--yes"), "{line}");
    assert_eq!(
        dst.psql("copy", "SELECT id FROM precious"),
        "42",
        "target untouched"
    );

    let out = init(
        &src.url("app"),
        &dst.url("copy"),
        &["--drop-existing", "--yes", "--progress", "none"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dst.psql(
            "copy",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'"
        ),
        "0"
    );
    assert_eq!(dst.psql("copy", "SELECT count(*) FROM fresh"), "2");
}

#[test]
fn bad_filters_and_options_are_usage_errors() {
    let src = Cluster::start(&Options::source());
    let dst = Cluster::start(&Options::target());
    src.create_db("app");
    src.psql("app", "CREATE TABLE t (id int)");
    let out = init(
        &src.url("app"),
        &dst.url("copy"),
        &["--table-filter", "public.nope:id > 1"],
    );
    let line = error_line(&out);
    assert!(
        line.contains("public.nope") && line.contains("not a table"),
        "{line}"
    );
    let out = init(
        &src.url("app"),
        &dst.url("copy"),
        &["--include-tables", "a.b.c"],
    );
    assert!(error_line(&out).contains("too many dots"));
    let out = init(&src.url("app"), &dst.url("copy"), &["--jobs", "0"]);
    assert!(error_line(&out).contains("--jobs"));
    let out = init(&src.url("app"), &dst.url("copy"), &["--resume"]);
    assert!(error_line(&out).contains("no interrupted run"));
}

#[test]
fn help_documents_every_flag() {
    let out = cli().args(["init", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--source",
        "--target",
        "--jobs",
        "--include-tables",
        "--exclude-tables",
        "--schema-only-tables",
        "--table-filter",
        "--drop-existing",
        "--yes",
        "--resume",
        "--split-tables-larger-than",
        "--copy-format",
        "--no-owner",
        "--no-privileges",
        "--pg-bindir",
        "--progress",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn remote_runs_say_what_is_missing_in_one_line() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = cli();
        cmd.env_remove("SEREN_REMOTE_API")
            .env_remove("SEREN_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.args(args).output().expect("run the CLI");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("Sup3rSecret"));
        out
    };
    let src = [
        "--source",
        "postgresql://app:Sup3rSecret@db.example.com/shop",
    ];
    let out = run(
        &[],
        &[
            "init",
            "--remote",
            src[0],
            src[1],
            "--target",
            "postgresql://app@t.example.com/shop",
        ],
    );
    assert!(
        error_line(&out).contains("SEREN_REMOTE_API"),
        "{}",
        error_line(&out)
    );
    let out = run(
        &[("SEREN_REMOTE_API", "https://api.example.com")],
        &[
            "init",
            "--remote",
            src[0],
            src[1],
            "--target",
            "postgresql://app@t.example.com/shop",
        ],
    );
    assert!(
        error_line(&out).contains("SEREN_API_KEY"),
        "{}",
        error_line(&out)
    );
    let out = run(
        &[
            ("SEREN_REMOTE_API", "https://api.example.com"),
            ("SEREN_API_KEY", "k"),
        ],
        &[
            "init",
            "--remote",
            "--source",
            "postgresql://db.example.com/shop",
            "--target",
            "postgresql://app@t.example.com/shop",
        ],
    );
    assert!(
        error_line(&out).contains("no user name"),
        "{}",
        error_line(&out)
    );
    let out = run(
        &[
            ("SEREN_REMOTE_API", "https://api.example.com"),
            ("SEREN_API_KEY", "k"),
        ],
        &[
            "init",
            "--remote",
            src[0],
            src[1],
            "--target",
            "postgresql://app@t.example.com/shop",
            "--drop-existing",
        ],
    );
    assert!(error_line(&out).contains("--yes"), "{}", error_line(&out));
    let out = run(&[], &["jobs", "list"]);
    assert!(
        error_line(&out).contains("SEREN_REMOTE_API"),
        "{}",
        error_line(&out)
    );
    // Flags that only mean something remotely need --remote.
    let out = run(
        &[],
        &[
            "init",
            src[0],
            src[1],
            "--target",
            "postgresql://app@t/shop",
            "--detach",
        ],
    );
    assert!(!out.status.success());
    // verify and validate on a worker say the same.
    for command in ["verify", "validate"] {
        let out = run(
            &[],
            &[
                command,
                "--remote",
                src[0],
                src[1],
                "--target",
                "postgresql://app@t.example.com/shop",
            ],
        );
        assert!(
            error_line(&out).contains("SEREN_REMOTE_API"),
            "{command}: {}",
            error_line(&out)
        );
        let out = run(
            &[
                ("SEREN_REMOTE_API", "https://api.example.com"),
                ("SEREN_API_KEY", "k"),
            ],
            &[
                command,
                "--remote",
                src[0],
                src[1],
                "--target",
                "postgresql://app@/shop?host=/tmp",
            ],
        );
        assert!(
            error_line(&out).contains("invalid target URL"),
            "{command}: {}",
            error_line(&out)
        );
        let out = run(
            &[],
            &[
                command,
                src[0],
                src[1],
                "--target",
                "postgresql://app@t/shop",
                "--detach",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command} --detach needs --remote"
        );
    }
}

#[test]
fn a_password_file_supplies_missing_passwords() {
    use std::os::unix::fs::PermissionsExt as _;
    let opts = |o: Options| Options {
        password: Some("pgpass-S3cret".into()),
        ..o
    };
    let src = Cluster::start(&opts(Options::source()));
    let dst = Cluster::start(&opts(Options::target()));
    src.create_db("app");
    src.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pgpass");
    std::fs::write(&file, "127.0.0.1:*:*:postgres:pgpass-S3cret\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let no_pw = |c: &Cluster, db: &str| {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            c.port()
        )
    };
    let out = cli()
        .arg("init")
        .env("SEREN_SOURCE_URL", no_pw(&src, "app"))
        .env("SEREN_TARGET_URL", no_pw(&dst, "app"))
        .env("PGPASSFILE", &file)
        .env_remove("PGPASSWORD")
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dst.psql("app", "SELECT count(*) FROM t"), "3");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pgpass-S3cret"));
}

//! Helpers for the CLI's tests: run the binary as a user would, with the source and target
//! URLs in its environment, and read what it said.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use pg_harness::{bindir, Cluster};

/// The CLI with `source` and `target` in its environment and its client tools from
/// `pg_bindir`; no standard input.
pub fn cli_with(pg_bindir: &Path, source: &str, target: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgres-seren-replicator"));
    cmd.stdin(Stdio::null())
        .env("SEREN_SOURCE_URL", source)
        .env("SEREN_TARGET_URL", target)
        .env("SEREN_PG_BINDIR", pg_bindir);
    cmd
}

/// [`cli_with`] the system's client tools.
pub fn cli(source: &str, target: &str) -> Command {
    cli_with(&bindir(), source, target)
}

/// Run the CLI with `args` and the system's client tools.
pub fn run(source: &str, target: &str, args: &[&str]) -> Output {
    run_with(&bindir(), source, target, args)
}

/// Run the CLI with `args` and the client tools of `pg_bindir`.
pub fn run_with(pg_bindir: &Path, source: &str, target: &str, args: &[&str]) -> Output {
    cli_with(pg_bindir, source, target)
        .args(args)
        .output()
        .expect("run the CLI")
}

/// Everything the CLI printed, standard output then standard error.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A refused run made nothing: no replication slot on the source, no publication in its
/// database `db`, no database `db` on the target.
pub fn assert_nothing_made(src: &Cluster, dst: &Cluster, db: &str) {
    assert_eq!(
        src.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0",
        "a replication slot was made"
    );
    assert_eq!(
        src.psql(db, "SELECT count(*) FROM pg_publication"),
        "0",
        "a publication was made"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        ),
        "0",
        "the target database was made"
    );
}

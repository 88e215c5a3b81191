//! Every flag of `init` with `--remote`: it travels with the job (read back from the job record
//! through a real coordinator), it is the client's own (display, confirmation, where the API
//! is), or the CLI refuses it in one line saying why. A flag added later without a decision
//! here fails the test.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coordinator::provision::local::{LocalConfig, LocalProvisioner};
use coordinator::{app, hash_key, ApiKeys, AppState, Settings};
use job_model::seal::LocalSealer;
use job_model::store::sqlite::SqliteStore;
use serde_json::{json, Value};

const KEY: &str = "sk-flags-0123456789";
const SOURCE: &str = "postgresql://app:Sup3rSecret@127.0.0.1:1/shop";
const TARGET: &str = "postgresql://app:Sup3rSecret@127.0.0.1:2/shop_copy";

/// A coordinator over SQLite on a loopback port, whose workers do nothing (`true`): jobs stay
/// where the submit left them, to be read back.
struct Api {
    url: String,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn api() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = AppState {
        store: Arc::new(SqliteStore::open(&dir.path().join("jobs.db")).expect("store")),
        sealer: Arc::new(LocalSealer::open_or_create(&dir.path().join("seal.key")).expect("key")),
        provisioner: Arc::new(LocalProvisioner::new(LocalConfig {
            program: "true".into(),
            args: Vec::new(),
            env: Vec::new(),
            log_dir: None,
            stop_grace: Duration::from_secs(1),
        })),
        keys: ApiKeys::from_hashes(&hash_key(KEY)).expect("keys"),
        settings: Settings {
            max_concurrent_jobs: None,
            ..Settings::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    runtime.spawn(async move { axum::serve(listener, app(state)).await });
    Api {
        url,
        _runtime: runtime,
        _dir: dir,
    }
}

fn cli(api: &Api) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgres-seren-replicator"));
    cmd.stdin(Stdio::null())
        .env_remove("SEREN_PG_BINDIR")
        .env_remove("SEREN_SYNC_SOURCE_URL")
        .env("SEREN_REMOTE_API", &api.url)
        .env("SEREN_API_KEY", KEY);
    cmd
}

fn said(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !text.contains("Sup3rSecret"),
        "a password was printed: {text}"
    );
    text
}

/// Submit `init --remote --detach` with `flags`; the job record as the API shows it.
fn submitted(api: &Api, flags: &[&str]) -> Result<Value, String> {
    let out = cli(api)
        .args([
            "init", "--remote", "--detach", "--source", SOURCE, "--target", TARGET,
        ])
        .args(flags)
        .output()
        .expect("run the CLI");
    let text = said(&out);
    if !out.status.success() {
        return Err(text);
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let shown = cli(api)
        .args(["jobs", "show", &id, "--json"])
        .output()
        .expect("jobs show");
    assert!(shown.status.success(), "{}", said(&shown));
    Ok(serde_json::from_slice(&shown.stdout).expect("job JSON"))
}

/// The flags `init --help` lists.
fn init_flags() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_postgres-seren-replicator"))
        .args(["init", "--help"])
        .output()
        .expect("help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let l = l.split_once(", ").map_or(l, |(short, long)| {
                if short.len() == 2 && short.starts_with('-') {
                    long
                } else {
                    l
                }
            });
            l.starts_with("--")
                .then(|| l.split([' ', '=', '<']).next().unwrap_or(l).to_owned())
        })
        .collect()
}

fn jobs_listed(api: &Api) -> usize {
    let out = cli(api)
        .args(["jobs", "list", "--json"])
        .output()
        .expect("jobs list");
    assert!(out.status.success(), "{}", said(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    v["jobs"].as_array().expect("jobs").len()
}

#[test]
fn a_dry_run_estimates_with_the_jobs_flags_and_submits_nothing() {
    let api = api();
    let dry = |flags: &[&str]| {
        cli(&api)
            .args([
                "init",
                "--remote",
                "--dry-run",
                "--source",
                SOURCE,
                "--target",
                TARGET,
            ])
            .args(flags)
            .output()
            .expect("run the CLI")
    };
    let out = dry(&["--jobs", "3", "--instance-type", "c5.large"]);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("worker    a local process"), "{text}");
    // The source (port 1) cannot be reached: no size, so no duration and no cost, and it says so.
    assert!(stdout.contains("size unknown"), "{text}");
    assert!(text.contains("nothing submitted"), "{text}");
    let out = dry(&["--json"]);
    assert!(out.status.success(), "{}", said(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("estimate JSON");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["estimate"]["market"], "local");
    // --drop-existing needs no --yes when nothing is dropped; a bad value is still refused.
    assert!(dry(&["--drop-existing"]).status.success());
    let bad = dry(&["--jobs", "0"]);
    assert!(!bad.status.success() && said(&bad).contains("--jobs is 0"));
    assert!(
        !dry(&["--detach"]).status.success(),
        "--dry-run with --detach"
    );
    assert_eq!(jobs_listed(&api), 0, "a dry run submits nothing");
}

#[test]
fn every_init_flag_travels_with_a_remote_job_or_is_refused() {
    let api = api();
    // Flags that go into the job: the flags given, and the fields of the record they set.
    let travels: &[(&[&str], Value)] = &[
        (&["--jobs", "3"], json!({"options": {"jobs": 3}})),
        (
            &["--include-tables", "public.a,b"],
            json!({"filter": {"include_tables": ["public.a", "b"]}}),
        ),
        (
            &["--exclude-tables", "audit.*"],
            json!({"filter": {"exclude_tables": ["audit.*"]}}),
        ),
        (
            &["--schema-only-tables", "public.log"],
            json!({"filter": {"schema_only_tables": ["public.log"]}}),
        ),
        (
            &["--table-filter", "public.orders:id > 5"],
            json!({"filter": {"table_filters": ["public.orders:id > 5"]}}),
        ),
        (
            &["--drop-existing", "--yes"],
            json!({"options": {"drop_existing": true}}),
        ),
        (
            &["--split-tables-larger-than", "2GB"],
            json!({"options": {"split_tables_larger_than_bytes": 2_147_483_648_u64}}),
        ),
        (&["--max-parts", "8"], json!({"options": {"max_parts": 8}})),
        (
            &["--copy-format", "text"],
            json!({"options": {"copy_format": "text"}}),
        ),
        (&["--no-owner"], json!({"options": {"no_owner": true}})),
        (
            &["--no-privileges"],
            json!({"options": {"no_privileges": true}}),
        ),
        (
            &["--maintenance-work-mem", "1GB"],
            json!({"options": {"maintenance_work_mem": "1GB"}}),
        ),
        (&["--retries", "5"], json!({"options": {"retries": 5}})),
        (
            &["--instance-type", "c5.large"],
            json!({"options": {"instance_type": "c5.large"}}),
        ),
        (
            &["--timeout-secs", "600"],
            json!({"options": {"timeout_seconds": 600}}),
        ),
        (
            &["--max-attempts", "5"],
            json!({"options": {"max_attempts": 5}}),
        ),
        (&["--sync"], json!({"options": {"sync": "required"}})),
        (&["--no-sync"], json!({"options": {"sync": "off"}})),
        (
            &[],
            json!({"source_display": "postgresql://app@127.0.0.1:1/shop",
                   "target_display": "postgresql://app@127.0.0.1:2/shop_copy"}),
        ),
    ];
    // The client's own: how it shows the job, where the API is, that the user confirmed.
    let client: &[(&[&str], &str)] = &[
        (&["--progress", "log"], "--progress"),
        (&["--json"], "--json"),
        (&[], "--detach"),
        (&[], "--dry-run"),
        (&[], "--remote"),
        (&["--api-key", KEY], "--api-key"),
        (&["--yes"], "--yes"),
        (&["--log-level", "info"], "--log-level"),
        (&[], "--source"),
        (&[], "--target"),
        (&[], "--help"),
    ];
    let refused: &[(&[&str], &str)] = &[
        (&["--resume"], "--resume is for local runs"),
        (
            &["--sync-source-url", "postgresql://repl@127.0.0.1:1/shop"],
            "--sync-source-url is for local runs",
        ),
        (
            &["--pg-bindir", "/usr/lib/postgresql/15/bin"],
            "--pg-bindir names a directory on this machine",
        ),
        (&["--max-parts", "0"], "--max-parts is 0"),
        (&["--jobs", "0"], "--jobs is 0"),
        (
            &["--maintenance-work-mem", "lots"],
            "--maintenance-work-mem 'lots' is not a PostgreSQL memory setting",
        ),
        (&["--retries", "1000"], "--retries is 1000"),
        (
            &["--instance-type", "p5.48xlarge"],
            "not one this deployment allows",
        ),
    ];

    let mut decided = BTreeSet::new();
    for (flags, want) in travels {
        let job = submitted(&api, flags).unwrap_or_else(|e| panic!("{flags:?} refused: {e}"));
        for (section, fields) in want.as_object().expect("object") {
            match fields.as_object() {
                Some(fields) => {
                    for (k, v) in fields {
                        assert_eq!(&job[section][k], v, "{flags:?}: {section}.{k} in {job}");
                    }
                }
                None => assert_eq!(&job[section], fields, "{flags:?}: {section}"),
            }
        }
        decided.extend(
            flags
                .iter()
                .filter(|f| f.starts_with("--"))
                .map(|f| (*f).to_owned()),
        );
    }
    // Nothing else was set by a plain submit: defaults stay the worker's, and replication
    // follows the copy when both servers allow it, as a local init does.
    let plain = submitted(&api, &[]).expect("plain");
    let options = plain["options"].as_object().expect("options");
    let keys: Vec<&String> = options.keys().collect();
    assert!(
        keys.iter()
            .all(|k| *k == "source_size_bytes" || *k == "sync"),
        "a plain submit set {keys:?}"
    );
    assert_eq!(plain["options"]["sync"], "auto", "{plain}");
    let remote_api = ["--remote-api", api.url.as_str()];
    submitted(&api, &remote_api).expect("--remote-api");
    decided.insert("--remote-api".to_owned());
    for (flags, name) in client {
        if !flags.is_empty() {
            submitted(&api, flags).unwrap_or_else(|e| panic!("{flags:?} refused: {e}"));
        }
        decided.insert((*name).to_owned());
    }
    for (flags, why) in refused {
        let refusal = submitted(&api, flags).expect_err(&format!("{flags:?} was accepted"));
        let line: Vec<&str> = refusal
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(line.len(), 1, "{flags:?}: one error line in {refusal}");
        assert!(line[0].contains(why), "{flags:?}: {refusal}");
        decided.extend(
            flags
                .iter()
                .filter(|f| f.starts_with("--"))
                .map(|f| (*f).to_owned()),
        );
    }
    let all = init_flags();
    assert!(all.len() > 25, "flags parsed from --help: {all:?}");
    let undecided: Vec<&String> = all.difference(&decided).collect();
    assert!(undecided.is_empty(), "no decision for {undecided:?}");

    // This machine's settings in the environment are not errors, but said: SEREN_PG_BINDIR,
    // and SEREN_SYNC_SOURCE_URL (for the local runs' replication; the flag is refused above).
    for (var, value, note) in [
        (
            "SEREN_PG_BINDIR",
            "/usr/lib/postgresql/15/bin",
            "SEREN_PG_BINDIR is a directory on this machine",
        ),
        (
            "SEREN_SYNC_SOURCE_URL",
            "postgresql://repl@127.0.0.1:1/shop",
            "SEREN_SYNC_SOURCE_URL is for local runs and not used",
        ),
    ] {
        let out = cli(&api)
            .env(var, value)
            .args([
                "init", "--remote", "--detach", "--source", SOURCE, "--target", TARGET,
            ])
            .output()
            .expect("run");
        assert!(out.status.success(), "{var}: {}", said(&out));
        assert!(said(&out).contains(note), "{var}: {}", said(&out));
    }
}

#[test]
fn verify_and_validate_flags_travel_or_are_refused() {
    let api = api();
    let run = |args: &[&str]| {
        let out = cli(&api)
            .args(args)
            .args([
                "--remote", "--detach", "--source", SOURCE, "--target", TARGET,
            ])
            .output()
            .expect("run");
        (
            out.status.success(),
            said(&out),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let (ok, text, id) = run(&[
        "verify",
        "--jobs",
        "2",
        "--chunk-rows",
        "5000",
        "--catch-up-timeout-secs",
        "30",
        "--exclude-tables",
        "audit.*",
    ]);
    assert!(ok, "{text}");
    let shown = cli(&api)
        .args(["jobs", "show", &id, "--json"])
        .output()
        .expect("show");
    let job: Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(
        job["options"],
        json!({"jobs": 2, "chunk_rows": 5000, "catch_up_timeout_seconds": 30})
    );
    assert_eq!(job["filter"]["exclude_tables"], json!(["audit.*"]));
    let (ok, text, _) = run(&["verify", "--chunk-rows", "0"]);
    assert!(!ok && text.contains("--chunk-rows is 0"), "{text}");
    let (ok, text, _) = run(&["validate", "--pg-bindir", "/usr/lib/postgresql/15/bin"]);
    assert!(
        !ok && text.contains("--pg-bindir names a directory on this machine"),
        "{text}"
    );
}

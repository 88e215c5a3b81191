//! The AMI runs `seren-worker` through `ami/seren-worker.service` with the environment file the
//! coordinator's user data writes. The names in both must be ones the worker reads, and the
//! paths must be the ones `ami/setup-worker.sh` installs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use coordinator::provision::ec2::{parse_user_data, user_data};

fn repo() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The environment variables `seren-worker` reads, from its own `--help`.
fn worker_reads() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_seren-worker"))
        .arg("--help")
        .output()
        .expect("run seren-worker --help");
    assert!(out.status.success());
    let flat = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    flat.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_unit_and_the_user_data_speak_the_workers_language() {
    let reads = worker_reads();
    assert!(reads.contains("SEREN_JOB_ID"), "{reads:?}");

    let unit = read("ami/seren-worker.service");
    let setting = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    for env in setting("Environment") {
        let (name, _) = env.split_once('=').expect("NAME=value");
        assert!(
            reads.contains(name),
            "the unit sets {name}, which seren-worker does not read"
        );
    }
    assert!(
        setting("Environment")
            .iter()
            .any(|e| e == "SEREN_USE_IMDS=true"),
        "on EC2 the claim must carry the instance id from IMDSv2"
    );

    let ud = user_data("0b6f8a52-2a8e-4e43-9d8e-5b0d5c0f8e11", "replication-jobs").expect("ud");
    for (name, _) in parse_user_data(&ud) {
        assert!(
            reads.contains(&name),
            "the user data writes {name}, which seren-worker does not read"
        );
    }
    // The file the user data writes is the one the unit reads, and the unit starts the binary
    // where the AMI's setup script installs it.
    assert_eq!(
        setting("EnvironmentFile"),
        vec!["/etc/seren-worker/job.env"]
    );
    assert!(ud.contains("cat > /etc/seren-worker/job.env"));
    assert!(ud.contains("systemctl start --no-block seren-worker.service"));
    assert_eq!(setting("ExecStart"), vec!["/usr/local/bin/seren-worker"]);
    let setup = read("ami/setup-worker.sh");
    assert!(setup.contains("/usr/local/bin/seren-worker"));
    assert!(setup.contains("/etc/systemd/system/seren-worker.service"));
    let user = setting("User");
    assert_eq!(user, vec!["seren-worker"]);
    assert!(setup.contains("useradd --system") && setup.contains(" seren-worker "));
    // verify-full on EC2: the unit names the bundle the setup script builds, which is also the
    // first place the worker looks without it.
    let bundle = worker::TRUST_STORES[0];
    assert_eq!(
        setting("Environment")
            .iter()
            .filter_map(|e| e.strip_prefix("SEREN_CA_BUNDLE="))
            .collect::<Vec<_>>(),
        vec![bundle]
    );
    assert!(
        setup.contains(&format!("> {bundle}")),
        "setup-worker.sh builds {bundle}"
    );
}

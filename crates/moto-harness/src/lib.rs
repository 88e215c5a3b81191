//! moto's AWS server (DynamoDB, EC2, KMS, IAM) on a free loopback port, one per test process,
//! and SDK configurations that reach it.
//!
//! The server is moto's application run by `moto_serial.py` (beside this crate), which answers
//! one request at a time: moto's threaded server lets two racing conditional writes both
//! succeed, which DynamoDB never does. The Python is `SEREN_MOTO_PYTHON`, else
//! `.venv-moto/bin/python` in the workspace root (where `scripts/lib.sh` installs moto), else
//! `python3`. It runs under a small shell that stops it when the test process's end closes its
//! stdin, so no server outlives its tests. Tests share the server: each uses its own table
//! names, keys and tags instead of resetting moto's state.
//!
//! This crate must not depend on any crate of the workspace.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    port: u16,
    // Held so that its stdin stays open for the life of the process.
    _child: Mutex<Child>,
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SEREN_MOTO_PYTHON") {
        return PathBuf::from(p);
    }
    // Found from where cargo runs the test (a compile-time path can be stale when a shared
    // target directory served another checkout).
    let starts = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        std::env::current_dir().ok(),
    ];
    for start in starts.iter().flatten() {
        for a in start.ancestors() {
            let venv = a.join(".venv-moto/bin/python");
            if venv.exists() {
                return venv;
            }
        }
    }
    PathBuf::from("python3")
}

const SERVER_SCRIPT: &str = include_str!("../moto_serial.py");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl Moto {
    /// The process's server, started on first use. Panics, saying how to install moto, when
    /// it cannot start.
    pub fn shared() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(Moto::start)
    }

    fn start() -> Moto {
        let program = python();
        let server =
            std::env::temp_dir().join(format!("seren-moto-serial-{}.py", std::process::id()));
        std::fs::write(&server, SERVER_SCRIPT).expect("write the moto server script");
        let port = free_port();
        // `cat` returns when our stdin pipe closes, i.e. when this process ends for any reason.
        let script = r#"exec 3<&0; "$0" "$1" 127.0.0.1 "$2" >/dev/null 2>&1 </dev/null & m=$!; cat <&3 >/dev/null; kill $m 2>/dev/null"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&program)
            .arg(&server)
            .arg(port.to_string())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh for moto_server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(port, "/moto-api/data.json").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                // Python has read the script by now.
                let _ = std::fs::remove_file(&server);
                return Moto {
                    port,
                    _child: Mutex::new(child),
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Closing its stdin makes the shell stop the server and exit.
        drop(child.stdin.take());
        let _ = child.wait();
        let _ = std::fs::remove_file(&server);
        panic!(
            "moto's server ({} {}) did not answer on 127.0.0.1:{port} within 30 s; install \
             moto with `python3 -m venv .venv-moto && .venv-moto/bin/pip install 'moto[server]'` \
             in the workspace root, or set SEREN_MOTO_PYTHON to a Python that has it",
            program.display(),
            server.display()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK configuration for this server: region `us-east-1`, static test credentials, no
    /// instance metadata lookups.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "moto-harness",
            ))
            .load()
            .await
    }
}

/// A name unique within this test process and across runs, for tables, keys and tags.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{prefix}-{}-{t}-{n}", std::process::id())
}

/// Helpers for tests of the EC2 side.
pub mod ec2 {
    use aws_sdk_ec2::types::{
        InstanceAttributeName, LaunchTemplateHttpTokensState,
        LaunchTemplateInstanceMetadataOptionsRequest, RequestLaunchTemplateData, ShutdownBehavior,
    };
    use aws_sdk_ec2::Client;
    use base64::Engine as _;

    /// An AMI id that moto knows.
    pub async fn ami(ec2: &Client) -> String {
        ec2.describe_images()
            .owners("amazon")
            .send()
            .await
            .expect("describe images")
            .images()
            .iter()
            .find_map(|i| i.image_id().map(str::to_owned))
            .expect("moto has AMIs")
    }

    /// A launch template as Terraform makes it for workers (an AMI, IMDSv2 required,
    /// `InstanceInitiatedShutdownBehavior=terminate`), under a unique name; returns the name.
    pub async fn worker_launch_template(ec2: &Client) -> String {
        let name = super::unique("seren-worker");
        ec2.create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(ami(ec2).await)
                    .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                    .metadata_options(
                        LaunchTemplateInstanceMetadataOptionsRequest::builder()
                            .http_tokens(LaunchTemplateHttpTokensState::Required)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("create launch template");
        name
    }

    /// An instance's user data, decoded.
    pub async fn user_data(ec2: &Client, instance_id: &str) -> String {
        let out = ec2
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .expect("describe user data");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out.user_data().and_then(|v| v.value()).unwrap_or_default())
            .expect("user data is base64");
        String::from_utf8(bytes).expect("user data is text")
    }
}

//! Shared setup for the coordinator's tests: a Router over a SQLite store, a local key-file
//! sealer and local worker processes (`sleep`), and helpers to call it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use coordinator::provision::local::{LocalConfig, LocalProvisioner};
use coordinator::{app, hash_key, ApiKeys, AppState, Settings};
use http_body_util::BodyExt as _;
use job_model::seal::LocalSealer;
use job_model::store::sqlite::SqliteStore;
use tower::ServiceExt as _;

pub const KEY_A: &str = "sk-alpha-0123456789";
pub const KEY_B: &str = "sk-beta-9876543210";
/// A password full of shell and URL metacharacters (percent-encoded in URLs).
pub const PASSWORD: &str = "pw;&&$(reboot)`id`'\"";
pub const PASSWORD_ENC: &str = "pw%3B%26%26%24(reboot)%60id%60'%22";

pub struct Fixture {
    pub router: Router,
    pub state: AppState,
    pub dir: tempfile::TempDir,
}

pub fn fixture_with(settings: Settings, program: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("jobs.db")).expect("store");
    let sealer = LocalSealer::open_or_create(&dir.path().join("seal.key")).expect("sealer");
    let provisioner = LocalProvisioner::new(LocalConfig {
        program: program.into(),
        args: vec!["300".into()],
        env: Vec::new(),
        log_dir: None,
        stop_grace: Duration::from_secs(2),
    });
    let keys =
        ApiKeys::from_hashes(&format!("{},{}", hash_key(KEY_A), hash_key(KEY_B))).expect("keys");
    let state = AppState {
        store: Arc::new(store),
        sealer: Arc::new(sealer),
        provisioner: Arc::new(provisioner),
        keys,
        settings,
    };
    Fixture {
        router: app(state.clone()),
        state,
        dir,
    }
}

pub fn fixture() -> Fixture {
    fixture_with(Settings::default(), "sleep")
}

pub fn submit_body(source_host: &str) -> String {
    format!(
        r#"{{"command":"init","source_url":"postgresql://app:{PASSWORD_ENC}@{source_host}:5432/shop","target_url":"postgresql://app:{PASSWORD_ENC}@[2001:db8::7]:5433/shop?sslmode=require","options":{{"jobs":4}},"filter":{{"exclude_tables":["audit.*"]}}}}"#
    )
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

pub async fn call(router: &Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub fn request(method: &str, uri: &str, key: Option<&str>, body: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(body.map_or_else(Body::empty, |s| Body::from(s.to_owned())))
        .expect("request")
}

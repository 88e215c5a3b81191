//! TLS against a real server with a certificate from a throwaway CA: each `sslmode` does what
//! libpq's does. `require` encrypts without checking; `verify-ca` checks the chain only;
//! `verify-full` checks the chain and the host name; a wrong CA or a wrong name is refused
//! with a line that says why.

use std::path::{Path, PathBuf};

use pg_harness::tls::ThrowawayCa;
use pg_harness::{Cluster, Options};
use replicator_core::{connect::connect, ConnUrl, Side};

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: pg_harness::tls::ServerCert,
    _cas: (ThrowawayCa, ThrowawayCa),
}

/// A CA, a server certificate for `localhost` only (no IP address), and an unrelated CA.
fn pki() -> Pki {
    let (ca, other) = (
        ThrowawayCa::new("seren test CA"),
        ThrowawayCa::new("another CA"),
    );
    Pki {
        ca: ca.cert(),
        other_ca: other.cert(),
        cert: ca.server("localhost", &["DNS:localhost"]),
        _cas: (ca, other),
    }
}

fn url(host: &str, port: u16, mode: &str, root: Option<&Path>) -> ConnUrl {
    let mut s =
        format!("postgresql://postgres@{host}:{port}/postgres?sslmode={mode}&connect_timeout=5");
    if let Some(r) = root {
        s.push_str(&format!("&sslrootcert={}", r.display()));
    }
    ConnUrl::parse_with_env(&s, &|_| None).expect("url")
}

/// Whether the session is encrypted, or the connect error.
async fn try_connect(u: &ConnUrl) -> Result<bool, String> {
    let client = connect(u, Side::Source).await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// A server presenting the throwaway CA's certificate for localhost.
fn tls_cluster(pki: &Pki) -> Cluster {
    Cluster::start(&Options {
        tls: Some(pki.cert.clone()),
        ..Options::target()
    })
}

#[test]
fn each_sslmode_checks_what_libpq_checks() {
    let pki = pki();
    let cluster = tls_cluster(&pki);
    let port = cluster.port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Encrypted, nothing checked.
        assert_eq!(
            try_connect(&url("127.0.0.1", port, "require", None)).await,
            Ok(true)
        );
        assert_eq!(
            try_connect(&url("127.0.0.1", port, "prefer", None)).await,
            Ok(true)
        );
        assert_eq!(
            try_connect(&url("127.0.0.1", port, "disable", None)).await,
            Ok(false)
        );
        // The chain: our CA yes, another CA no, whatever the host name.
        assert_eq!(
            try_connect(&url("127.0.0.1", port, "verify-ca", Some(&pki.ca))).await,
            Ok(true)
        );
        let err = try_connect(&url("127.0.0.1", port, "verify-ca", Some(&pki.other_ca)))
            .await
            .expect_err("unknown issuer");
        assert!(
            err.contains("not signed by a CA this machine trusts"),
            "{err}"
        );
        // `require` with a root certificate checks the chain, as libpq does.
        assert!(
            try_connect(&url("127.0.0.1", port, "require", Some(&pki.other_ca)))
                .await
                .is_err()
        );
        // The chain and the name: localhost is in the certificate, 127.0.0.1 is not.
        assert_eq!(
            try_connect(&url("localhost", port, "verify-full", Some(&pki.ca))).await,
            Ok(true)
        );
        let err = try_connect(&url("127.0.0.1", port, "verify-full", Some(&pki.ca)))
            .await
            .expect_err("name mismatch");
        assert!(err.contains("does not name the host"), "{err}");
        assert!(
            err.contains("127.0.0.1"),
            "the error names the server: {err}"
        );
        // Without a root certificate, verify-full trusts only the public web PKI.
        assert!(try_connect(&url("localhost", port, "verify-full", None))
            .await
            .is_err());
    });
}

/// The replication client (which opens its own TLS session) checks what the driver checks.
#[test]
fn the_replication_connection_checks_certificates_the_same_way() {
    use replicator_core::replication::ReplicationSession;
    let pki = pki();
    let cluster = tls_cluster(&pki);
    let port = cluster.port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let encrypted = |u: ConnUrl| async move {
            let mut s = ReplicationSession::connect(&u)
                .await
                .map_err(|e| e.to_string())?;
            let rows = s
                .simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(rows[0][0].as_deref() == Some("true"))
        };
        assert_eq!(
            encrypted(url("localhost", port, "verify-full", Some(&pki.ca))).await,
            Ok(true)
        );
        assert_eq!(
            encrypted(url("127.0.0.1", port, "require", None)).await,
            Ok(true)
        );
        assert_eq!(
            encrypted(url("127.0.0.1", port, "disable", None)).await,
            Ok(false)
        );
        let err = encrypted(url("127.0.0.1", port, "verify-full", Some(&pki.ca)))
            .await
            .expect_err("name mismatch");
        assert!(err.contains("does not name the host"), "{err}");
        let err = encrypted(url("localhost", port, "verify-ca", Some(&pki.other_ca)))
            .await
            .expect_err("unknown issuer");
        assert!(
            err.contains("not signed by a CA this machine trusts"),
            "{err}"
        );
    });
}

//! Opening sessions: the driver's config from a [`ConnUrl`], TLS by `sslmode` over rustls,
//! TCP keepalives (long copies behind load balancers die on idle connections otherwise), a
//! connect timeout around the whole handshake, and the session settings every session of the
//! engine pins before its first statement ([`PINNED_SETTINGS`]).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::Config;

/// A session, as [`connect`] opens it.
pub use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::conninfo::{ConnUrl, SslMode};
use crate::error::{pg_message, Error, Result, Side};

/// The `application_name` our sessions report unless the URL sets one.
pub const APPLICATION_NAME: &str = "postgres-seren-replicator";

/// What every session the engine opens sets first, whatever the server, database or role
/// default to (`ALTER DATABASE … SET datestyle`, a role's `search_path`, a server's
/// `extra_float_digits = 0` …). These are the settings that change how a value is written as
/// text or read back from it, and the ones that could end a long session: the same ones
/// pg_dump pins, for the same reason. A text COPY, a row filter and verify's checksums then
/// mean the same thing on both servers:
///
/// - `DateStyle = ISO` (`SQL, DMY` would swap day and month on the way through text),
///   `IntervalStyle = postgres`, `extra_float_digits = 3` (every float digit),
///   `bytea_output = hex`, `xmloption = content`, `lc_monetary = 'C'` (money is read and written
///   in one locale on both sides, so its stored integer survives), `standard_conforming_strings`;
/// - `search_path = ''`: names of the `reg*` types and of user types are written qualified, as
///   the target must read them; a `--table-filter` predicate names user objects with their
///   schema;
/// - `row_security = off`: a table that row-level security would filter raises an error
///   instead of silently copying (or counting) fewer rows;
/// - no statement, lock, idle-in-transaction or idle-session timeout;
/// - `default_transaction_read_only = off`: a database or role that defaults to read-only (the
///   source database's own settings, given to the target when its copy is complete; a role
///   `cutover` froze) must not turn the tool's own writes (its bookkeeping, the publication, the
///   subscription) into errors.
///
/// `TimeZone` is left alone (a filter's `'2024-01-01'` means what the user meant); verify sets
/// it to UTC on both sides, where it changes the text it compares.
pub const PINNED_SETTINGS: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; \
     SET extra_float_digits = 3; SET bytea_output = hex; SET xmloption = content; \
     SET lc_monetary = 'C'; SET standard_conforming_strings = on; SET search_path = ''; \
     SET row_security = off; SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; SET default_transaction_read_only = off; \
     SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings \
      WHERE name = 'idle_session_timeout'";

/// Open a session with [`PINNED_SETTINGS`] in force. Its connection task runs on the current
/// runtime until the client drops.
///
/// # Errors
/// [`Error::Connect`] with the reason (unreachable, timeout, authentication, no such database,
/// TLS), never with the password; [`Error::Sql`] when the settings cannot be pinned.
pub async fn connect(url: &ConnUrl, side: Side) -> Result<Client> {
    let fail = |reason: String, retryable: bool| Error::Connect {
        side,
        url: url.redacted(),
        reason,
        retryable,
    };
    let config = driver_config(url);
    let tls = tls_connector(url).map_err(|reason| fail(reason, false))?;
    let attempt = config.connect(tls.clone());
    let (client, connection) = match tokio::time::timeout(url.connect_timeout, attempt).await {
        Err(_) => {
            return Err(fail(
                format!(
                    "timed out after {} s (connect_timeout)",
                    url.connect_timeout.as_secs()
                ),
                true,
            ))
        }
        Ok(Err(e)) => {
            if let Some(hint) = certificate_refused(&e) {
                return Err(fail(format!("{}; {hint}", pg_message(&e)), false));
            }
            let retryable = e.as_db_error().is_none()
                || e.code()
                    .is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("53"));
            return Err(fail(pg_message(&e), retryable));
        }
        Ok(Ok(pair)) => pair,
    };
    let alive = RUN_SESSIONS
        .try_with(|sessions| sessions.track(&client, &tls))
        .ok()
        .flatten();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%side, error = %pg_message(&e), "connection closed");
        }
        if let Some(a) = alive {
            a.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    });
    client
        .batch_execute(PINNED_SETTINGS)
        .await
        .map_err(|e| Error::sql(side, "pin the session settings", e))?;
    Ok(client)
}

/// What to do about a server certificate that the TLS check refused, when `e` is that refusal
/// (not worth retrying: the same certificate is refused again).
pub(crate) fn certificate_refused(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(why)) = tls {
            return Some(match why {
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "the server's certificate does not name the host of the URL: connect by \
                     the name the certificate holds"
                }
                _ => {
                    "the server's certificate is not signed by a CA this machine trusts: name \
                     the CA in sslrootcert (a remote worker trusts its --ca-bundle), or use \
                     sslmode=require to encrypt without checking the server"
                }
            });
        }
        cause = c.source();
    }
    None
}

/// The sessions of one run, so that a run that stops can cancel what they are waiting on.
///
/// Dropping a client does not end a query its server is running: a backend waiting for a lock
/// (behind another session's `ACCESS EXCLUSIVE`, say) waits on, holding its place in the lock
/// queue, until the lock comes, and only then finds its client gone. A run that stops (a
/// cancel, a stall, a failure) sends each of its live sessions a cancel request, as `psql` does
/// on Ctrl-C, so that nothing of it keeps waiting on the user's servers.
///
/// A run's code opens sessions inside [`Sessions::scope`]; [`connect`] records each one in the
/// registry of the scope it runs in (none outside a scope: untracked). A task the run spawns
/// stays in the run's scope only through [`Sessions::carry`].
#[derive(Clone, Default)]
pub struct Sessions(Option<Arc<std::sync::Mutex<Vec<Tracked>>>>);

struct Tracked {
    token: tokio_postgres::CancelToken,
    tls: MakeRustlsConnect,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

tokio::task_local! {
    /// The registry of the run the current task belongs to.
    static RUN_SESSIONS: Sessions;
}

impl Sessions {
    /// A new, empty registry.
    pub fn tracked() -> Self {
        Self(Some(Arc::default()))
    }

    /// Run `work` with every session it opens recorded here.
    pub async fn scope<F: std::future::Future>(&self, work: F) -> F::Output {
        RUN_SESSIONS.scope(self.clone(), work).await
    }

    /// `work`, made ready to be spawned as a task of the current run: the sessions it opens are
    /// recorded in the run's registry, as they would be in the task that spawns it.
    pub fn carry<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
        let current = RUN_SESSIONS.try_with(Clone::clone).unwrap_or_default();
        RUN_SESSIONS.scope(current, work)
    }

    /// Record `client`'s session; returns the flag its connection task clears when it ends.
    fn track(
        &self,
        client: &Client,
        tls: &MakeRustlsConnect,
    ) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        let list = self.0.as_ref()?;
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut l = list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.retain(|t| t.alive.load(std::sync::atomic::Ordering::Relaxed));
        l.push(Tracked {
            token: client.cancel_token(),
            tls: tls.clone(),
            alive: alive.clone(),
        });
        Some(alive)
    }

    /// Ask the server of every session still open to cancel what it runs; returns how many
    /// were asked. A session with nothing running ignores the request.
    pub async fn cancel_all(&self) -> usize {
        let Some(list) = &self.0 else { return 0 };
        let live: Vec<(tokio_postgres::CancelToken, MakeRustlsConnect)> = list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|t| t.alive.load(std::sync::atomic::Ordering::Relaxed))
            .map(|t| (t.token.clone(), t.tls.clone()))
            .collect();
        let n = live.len();
        let sends = live.into_iter().map(|(token, tls)| async move {
            let sent = tokio::time::timeout(Duration::from_secs(5), token.cancel_query(tls)).await;
            if let Ok(Err(e)) = sent {
                tracing::debug!(error = %e, "cancel request not delivered");
            }
        });
        futures_util::future::join_all(sends).await;
        n
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "tracked"
        } else {
            "untracked"
        })
    }
}

fn driver_config(url: &ConnUrl) -> Config {
    let mut config = Config::new();
    config
        .host(&url.host)
        .port(url.port)
        .user(&url.user)
        .dbname(&url.dbname)
        .connect_timeout(url.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(6)
        .application_name(url.application_name.as_deref().unwrap_or(APPLICATION_NAME))
        .ssl_mode(match url.sslmode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
    if let Some(pw) = &url.password {
        config.password(pw.expose());
    }
    if let Some(o) = &url.options {
        config.options(o);
    }
    config
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the server certificate is checked, as libpq does for each `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn check_for(url: &ConnUrl) -> Check {
    match url.sslmode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer => Check::Nothing,
        // libpq: with a root certificate file present, `require` checks the chain.
        SslMode::Require if url.sslrootcert.as_ref().is_some_and(|p| p.exists()) => Check::Chain,
        SslMode::Require => Check::Nothing,
        SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::ChainAndName,
    }
}

fn tls_connector(url: &ConnUrl) -> Result<MakeRustlsConnect, String> {
    Ok(MakeRustlsConnect::new(rustls_config(url)?))
}

/// The TLS client configuration `url`'s `sslmode` and `sslrootcert` call for (also used by the
/// replication protocol client).
///
/// # Errors
/// When the root certificates cannot be read.
pub(crate) fn rustls_config(url: &ConnUrl) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match check_for(url) {
        Check::Nothing => Arc::new(AcceptAnyCertificate(provider.clone())),
        check => {
            let roots = Arc::new(root_store(url)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if check == Check::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// The CAs to trust: `sslrootcert` (or `~/.postgresql/root.crt` as libpq), else the web PKI.
fn root_store(url: &ConnUrl) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let default_file = std::env::var_os("HOME")
        .map(|h| {
            std::path::PathBuf::from(h)
                .join(".postgresql")
                .join("root.crt")
        })
        .filter(|p| p.exists());
    let file = match &url.sslrootcert {
        Some(p) if p.as_os_str() == "system" => None,
        Some(p) => Some(p.clone()),
        None => default_file,
    };
    match file {
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
            let mut reader = pem.as_slice();
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// `sslmode=require` without a CA: encrypt, check nothing (libpq's behaviour).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted CA; the name may be anything.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ConnUrl {
        ConnUrl::parse_with_env(s, &|_| None).expect("parses")
    }

    #[test]
    fn sslmode_decides_what_is_checked() {
        assert_eq!(
            check_for(&url("postgresql://u@h/d?sslmode=disable")),
            Check::Nothing
        );
        assert_eq!(
            check_for(&url("postgresql://u@h/d?sslmode=prefer")),
            Check::Nothing
        );
        assert_eq!(
            check_for(&url("postgresql://u@h/d?sslmode=require")),
            Check::Nothing
        );
        assert_eq!(
            check_for(&url("postgresql://u@h/d?sslmode=verify-ca")),
            Check::Chain
        );
        assert_eq!(
            check_for(&url("postgresql://u@h/d?sslmode=verify-full")),
            Check::ChainAndName
        );
        let ca = tempfile::NamedTempFile::new().expect("temp file");
        let with_ca = format!(
            "postgresql://u@h/d?sslmode=require&sslrootcert={}",
            ca.path().display()
        );
        assert_eq!(check_for(&url(&with_ca)), Check::Chain);
    }

    #[test]
    fn a_root_cert_file_without_certificates_is_refused() {
        let ca = tempfile::NamedTempFile::new().expect("temp file");
        let u = url(&format!(
            "postgresql://u@h/d?sslmode=verify-full&sslrootcert={}",
            ca.path().display()
        ));
        let err = tls_connector(&u).err().expect("refused");
        assert!(err.contains("no PEM certificate"), "{err}");
        assert!(tls_connector(&url("postgresql://u@h/d?sslmode=verify-full")).is_ok());
    }
}

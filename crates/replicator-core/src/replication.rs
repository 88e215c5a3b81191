//! A minimal client for PostgreSQL's replication protocol, enough to create a logical
//! replication slot that exports its snapshot and to keep that snapshot alive.
//!
//! Why our own: tokio-postgres has no replication connection mode (the startup parameter
//! `replication=database` cannot be set through it), and the crates that add one are forks that
//! lag upstream tokio-postgres or drag in a second driver. What this needs is small: a TLS
//! handshake by `sslmode` with the same rustls configuration as every other session, startup
//! with `replication=database`, password, MD5 or SCRAM-SHA-256 authentication, simple-query
//! commands, and then an idle session held open for as long as the copy runs.
//! `postgres-protocol` (from the rust-postgres project we already use) encodes and parses the
//! messages and does the SCRAM exchange; this module only drives them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connect::{rustls_config, APPLICATION_NAME};
use crate::conninfo::{ConnUrl, SslMode};
use crate::error::{Error, Result, Side};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A session in replication mode (`replication=database`) on the source.
pub struct ReplicationSession {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    url: String,
    /// The server's major version, from the `server_version` it reports at startup.
    major: u32,
}

impl std::fmt::Debug for ReplicationSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationSession")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What `CREATE_REPLICATION_SLOT … LOGICAL … (SNAPSHOT 'export')` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// The LSN from which the slot streams changes: the snapshot sees everything before it.
    pub consistent_point: String,
    /// The exported snapshot, valid while the session stays open and idle.
    pub snapshot_name: String,
}

/// The major version in a `server_version` string (`15.18 (Debian 15.18-0+deb12u1)` → 15,
/// `18beta1` → 18).
fn major_of(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `CREATE_REPLICATION_SLOT` for a logical `pgoutput` slot that exports its snapshot, spelled
/// for a server of major version `major`: the parenthesised option list exists from
/// PostgreSQL 15 on; 10 to 14 know only the keyword form, which 15 and later still accept but
/// document as deprecated. An unknown version (0) gets the keyword form, which every server
/// with logical replication understands.
pub fn create_slot_command(slot: &str, major: u32) -> String {
    let name = crate::sql::ident(slot);
    if major >= 15 {
        format!("CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput (SNAPSHOT 'export')")
    } else {
        format!("CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput EXPORT_SNAPSHOT")
    }
}

/// A server's `ErrorResponse`, as one line.
fn server_error(
    fields: &mut postgres_protocol::message::backend::ErrorFields<'_>,
) -> (String, Option<String>) {
    let (mut message, mut detail, mut hint, mut code) = (String::new(), None, None, None);
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            b'C' => code = Some(value),
            _ => {}
        }
    }
    if let Some(d) = detail {
        message.push_str(&format!(" ({d})"));
    }
    if let Some(h) = hint {
        message.push_str(&format!("; hint: {h}"));
    }
    (message.replace('\n', " "), code)
}

impl ReplicationSession {
    /// Connect to `url`'s database in replication mode and authenticate.
    ///
    /// # Errors
    /// [`Error::Connect`] with the reason (never the password).
    pub async fn connect(url: &ConnUrl) -> Result<Self> {
        let fail = |reason: String, retryable: bool| Error::Connect {
            side: Side::Source,
            url: url.redacted(),
            reason: format!("replication connection: {reason}"),
            retryable,
        };
        if url.is_socket() {
            return Err(fail(
                "a Unix socket is not supported for the replication connection; use a host name"
                    .into(),
                false,
            ));
        }
        match tokio::time::timeout(url.connect_timeout, Self::handshake(url)).await {
            Err(_) => Err(fail(
                format!(
                    "timed out after {} s (connect_timeout)",
                    url.connect_timeout.as_secs()
                ),
                true,
            )),
            Ok(Err((reason, retryable))) => Err(fail(reason, retryable)),
            Ok(Ok(session)) => Ok(session),
        }
    }

    async fn handshake(url: &ConnUrl) -> std::result::Result<Self, (String, bool)> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| (e.to_string(), true))?;
        tcp.set_nodelay(true).ok();
        // The session sits idle for the whole copy; keepalives stop middleboxes from dropping it.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10));
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&keepalive)
            .ok();
        let stream = Self::tls(url, tcp).await?;
        let mut session = Self {
            stream,
            buf: BytesMut::with_capacity(8192),
            url: url.redacted(),
            major: 0,
        };
        session.startup(url).await?;
        Ok(session)
    }

    async fn tls(
        url: &ConnUrl,
        mut tcp: TcpStream,
    ) -> std::result::Result<Box<dyn Stream>, (String, bool)> {
        if url.sslmode == SslMode::Disable {
            return Ok(Box::new(tcp));
        }
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req)
            .await
            .map_err(|e| (e.to_string(), true))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| (e.to_string(), true))?;
        match answer[0] {
            b'S' => {
                let config = rustls_config(url).map_err(|e| (e, false))?;
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|e| (format!("TLS server name {}: {e}", url.host), false))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| match crate::connect::certificate_refused(&e) {
                        Some(hint) => (format!("TLS: {e}; {hint}"), false),
                        None => (format!("TLS: {e}"), false),
                    })?;
                Ok(Box::new(tls))
            }
            b'N' if matches!(url.sslmode, SslMode::Allow | SslMode::Prefer) => Ok(Box::new(tcp)),
            b'N' => Err((
                format!(
                    "the server does not accept TLS, which sslmode={} requires",
                    url.sslmode.as_str()
                ),
                false,
            )),
            other => Err((
                format!("unexpected answer {other} to the TLS request"),
                false,
            )),
        }
    }

    async fn send(&mut self, out: &BytesMut) -> std::result::Result<(), (String, bool)> {
        self.stream
            .write_all(out)
            .await
            .map_err(|e| (e.to_string(), true))?;
        self.stream.flush().await.map_err(|e| (e.to_string(), true))
    }

    async fn recv(&mut self) -> std::result::Result<Message, (String, bool)> {
        loop {
            if let Some(m) = Message::parse(&mut self.buf).map_err(|e| (e.to_string(), false))? {
                return Ok(m);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| (e.to_string(), true))?;
            if n == 0 {
                return Err(("the server closed the connection".into(), true));
            }
        }
    }

    async fn startup(&mut self, url: &ConnUrl) -> std::result::Result<(), (String, bool)> {
        let app = url.application_name.as_deref().unwrap_or(APPLICATION_NAME);
        let mut params: Vec<(&str, &str)> = vec![
            ("user", url.user.as_str()),
            ("database", url.dbname.as_str()),
            ("replication", "database"),
            ("application_name", app),
            ("client_encoding", "UTF8"),
        ];
        if let Some(o) = &url.options {
            params.push(("options", o.as_str()));
        }
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out)
            .map_err(|e| (e.to_string(), false))?;
        self.send(&out).await?;
        let password = url
            .password
            .as_ref()
            .map(|p| p.expose().as_bytes().to_vec());
        let need_password = || {
            (
                "the server asks for a password and none was given (URL, PGPASSWORD or ~/.pgpass)"
                    .to_owned(),
                false,
            )
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut out = BytesMut::new();
            match self.recv().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = password.as_deref().ok_or_else(need_password)?;
                    frontend::password_message(pw, &mut out).map_err(|e| (e.to_string(), false))?;
                    self.send(&out).await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = password.as_deref().ok_or_else(need_password)?;
                    let hashed = postgres_protocol::authentication::md5_hash(
                        url.user.as_bytes(),
                        pw,
                        body.salt(),
                    );
                    frontend::password_message(hashed.as_bytes(), &mut out)
                        .map_err(|e| (e.to_string(), false))?;
                    self.send(&out).await?;
                }
                Message::AuthenticationSasl(body) => {
                    let pw = password.as_deref().ok_or_else(need_password)?;
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next().map_err(|e| (e.to_string(), false))? {
                        offered |= m == SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err((
                            "the server offers no SASL mechanism we support (SCRAM-SHA-256)".into(),
                            false,
                        ));
                    }
                    // No channel binding: the gs2 header says the client does not support it.
                    let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                        .map_err(|e| (e.to_string(), false))?;
                    self.send(&out).await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ("unexpected SASL message".to_owned(), false))?;
                    s.update(body.data())
                        .map_err(|e| (format!("SCRAM: {e}"), false))?;
                    frontend::sasl_response(s.message(), &mut out)
                        .map_err(|e| (e.to_string(), false))?;
                    self.send(&out).await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ("unexpected SASL message".to_owned(), false))?;
                    s.finish(body.data()).map_err(|e| {
                        (
                            format!("SCRAM: the server's proof does not verify: {e}"),
                            false,
                        )
                    })?;
                }
                Message::ErrorResponse(body) => {
                    let (message, code) = server_error(&mut body.fields());
                    let retryable = code
                        .as_deref()
                        .is_some_and(|c| c.starts_with("57P") || c.starts_with("53"));
                    return Err((message, retryable));
                }
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ParameterStatus(body) => {
                    if body.name().ok() == Some("server_version") {
                        self.major = body.value().ok().and_then(major_of).unwrap_or(0);
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                _ => {
                    return Err((
                        "unsupported authentication method (use password, md5 or scram-sha-256)"
                            .into(),
                        false,
                    ))
                }
            }
        }
    }

    /// Run one replication command or SQL statement; the rows of its result as text.
    ///
    /// # Errors
    /// [`Error::Sql`] with the server's message, or [`Error::Connect`] when the session broke.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let broken = |(reason, retryable): (String, bool), url: &str| Error::Connect {
            side: Side::Source,
            url: url.to_owned(),
            reason: format!("replication connection: {reason}"),
            retryable,
        };
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| Error::io("encode a query", e))?;
        let url = self.url.clone();
        self.send(&out).await.map_err(|e| broken(e, &url))?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.recv().await.map_err(|e| broken(e, &url))? {
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next().map_err(|e| Error::io("read a row", e))? {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Message::ErrorResponse(body) => {
                    let (message, code) = server_error(&mut body.fields());
                    failure = Some(Error::Sql {
                        side: Side::Source,
                        context: "replication command".into(),
                        message,
                        code,
                    });
                }
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// The server's major version (0 when it did not say).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Create a permanent logical slot for `pgoutput` whose changes start exactly where the
    /// snapshot it exports ends ([`create_slot_command`] spells the command for the server).
    ///
    /// # Errors
    /// [`Error::Sql`] (slot exists, no free slot, no privilege, `wal_level` too low).
    pub async fn create_logical_slot(&mut self, slot: &str) -> Result<CreatedSlot> {
        let rows = self
            .simple_query(&create_slot_command(slot, self.major))
            .await
            .map_err(|e| match e {
                Error::Sql { message, code, .. } => Error::Sql {
                    side: Side::Source,
                    context: format!("create the replication slot {slot}"),
                    message,
                    code,
                },
                other => other,
            })?;
        let row = rows.into_iter().next().unwrap_or_default();
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let created = CreatedSlot {
            slot_name: field(0),
            consistent_point: field(1),
            snapshot_name: field(2),
        };
        if created.snapshot_name.is_empty() {
            return Err(Error::Sql {
                side: Side::Source,
                context: format!("create the replication slot {slot}"),
                message: "the server exported no snapshot".into(),
                code: None,
            });
        }
        Ok(created)
    }

    /// Hand the idle session to a task that watches it: the returned flag turns false when the
    /// server closes it (the exported snapshot is then gone). Dropping the returned guard ends
    /// the session.
    pub fn hold(mut self) -> HeldSession {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let task = tokio::spawn(async move {
            // Nothing is expected on an idle session; anything that ends the read ends it.
            loop {
                self.buf.clear();
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // A NoticeResponse or ParameterStatus: not an end.
                        if self.buf.first() == Some(&b'E') {
                            break;
                        }
                        self.buf.advance(self.buf.len());
                    }
                }
            }
            flag.store(false, Ordering::SeqCst);
        });
        HeldSession { alive, task }
    }
}

/// An idle replication session kept open (its exported snapshot stays valid meanwhile).
#[derive(Debug)]
pub struct HeldSession {
    alive: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HeldSession {
    /// Whether the server still has the session.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.task.is_finished()
    }
}

impl Drop for HeldSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_version_is_read_from_any_server_version_string() {
        assert_eq!(major_of("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(major_of("12.22"), Some(12));
        assert_eq!(major_of("18beta1"), Some(18));
        assert_eq!(major_of("18.6"), Some(18));
        assert_eq!(major_of("devel"), None);
    }

    #[test]
    fn servers_before_15_get_the_keyword_form_of_create_replication_slot() {
        for major in [10, 12, 13, 14, 0] {
            assert_eq!(
                create_slot_command("seren_a", major),
                "CREATE_REPLICATION_SLOT \"seren_a\" LOGICAL pgoutput EXPORT_SNAPSHOT",
                "major {major}"
            );
        }
        for major in [15, 16, 17, 18] {
            assert_eq!(
                create_slot_command("seren_a", major),
                "CREATE_REPLICATION_SLOT \"seren_a\" LOGICAL pgoutput (SNAPSHOT 'export')",
                "major {major}"
            );
        }
        assert_eq!(
            create_slot_command("Odd \"name\"", 14),
            "CREATE_REPLICATION_SLOT \"Odd \"\"name\"\"\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
    }
}

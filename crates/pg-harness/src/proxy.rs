//! A TCP proxy between a program under test and a PostgreSQL server that drops connections at
//! chosen points of the protocol: after the Nth byte of COPY data, right after a COMMIT has
//! reached the server and before its reply reaches the client (a lost reply: the server
//! commits, the client sees a broken connection), on a session's first query.
//!
//! It reads the frontend and backend protocols just far enough to find message boundaries
//! (startup, SSLRequest and its one-byte answer, then typed messages), so a fault always falls
//! between two messages, exactly where it was asked for. Sessions that negotiate TLS are passed
//! through unparsed (the harness's servers do not offer TLS). The proxy runs on a thread of its
//! own with its own runtime, so a test's runtime can be dropped or blocked without stopping it.
//!
//! ```no_run
//! # use pg_harness::{Cluster, Options, proxy::{Proxy, Fault, Trigger, Action}};
//! let server = Cluster::start(&Options::target());
//! let proxy = Proxy::start(server.port());
//! proxy.arm(Fault::once(
//!     Trigger::Query(vec!["public.big#2".into(), "COMMIT".into()]),
//!     Action::LoseReply,
//! ));
//! // … point the program at 127.0.0.1:proxy.port() …
//! assert_eq!(proxy.fired(), 1);
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A query (simple `Query`, or `Parse`/`Bind` of an extended one) whose text or parameters
    /// contain all of these.
    Query(Vec<String>),
    /// On a connection that earlier sent a message containing `after`, the first later
    /// message containing `then` (e.g. the COMMIT of one unit of work).
    QueryAfter {
        /// What marks the connection.
        after: String,
        /// What fires.
        then: String,
    },
    /// The first query of a session.
    FirstQuery,
    /// COPY data sent by the client on one connection reaches this many bytes (`COPY … FROM
    /// STDIN`).
    ClientCopyBytes(u64),
    /// COPY data sent by the server on one connection reaches this many bytes (`COPY … TO
    /// STDOUT`).
    ServerCopyBytes(u64),
}

/// What a fault does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drop the connection at once, in both directions, without forwarding the message.
    Cut,
    /// Forward the message to the server, then close the client's side at once and let the
    /// server's reply go nowhere: the server does the work (a COMMIT commits), the client only
    /// sees its connection break.
    LoseReply,
    /// Hold the message and everything after it from the client: the session hangs (mid-COPY,
    /// say) until the client goes away, which then ends it.
    Stall,
}

/// A fault to inject, at most `times` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When.
    pub when: Trigger,
    /// What.
    pub action: Action,
    /// How many times it may still fire.
    pub times: usize,
}

impl Fault {
    /// A fault that fires once.
    pub fn once(when: Trigger, action: Action) -> Self {
        Self {
            when,
            action,
            times: 1,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    faults: Mutex<Vec<Fault>>,
    fired: AtomicUsize,
    connections: AtomicUsize,
}

impl Shared {
    /// The action of the first armed fault `matches` accepts, using it up.
    fn take(&self, matches: impl Fn(&Trigger) -> bool) -> Option<Action> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let f = faults
            .iter_mut()
            .find(|f| f.times > 0 && matches(&f.when))?;
        f.times -= 1;
        self.fired.fetch_add(1, Ordering::SeqCst);
        Some(f.action)
    }
}

/// A running proxy. Stops (dropping every connection) when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    cut_all: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = std_listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let (cut_all, cut_rx) = watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let (s, cut) = (s.clone(), cut_rx.clone());
                        tokio::spawn(async move {
                            if let Ok(server) =
                                TcpStream::connect(("127.0.0.1", upstream_port)).await
                            {
                                s.connections.fetch_add(1, Ordering::SeqCst);
                                relay(client, server, s, cut).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Proxy {
            port,
            shared,
            cut_all,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The port to connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Add a fault.
    pub fn arm(&self, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fault);
    }

    /// How many faults have fired so far.
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// How many connections it has relayed so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Drop every open connection now (a network blip).
    pub fn cut_all(&self) {
        self.cut_all.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

fn contains(haystack: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty() && haystack.windows(n.len()).any(|w| w == n)
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// What one connection's two directions share.
struct Conn {
    /// The client's side is gone: drop what the server sends.
    discard: AtomicBool,
    /// The client asked for TLS and the server's one-byte answer is due.
    ssl_answer_due: AtomicBool,
    /// TLS was negotiated: pass bytes through unparsed.
    opaque: AtomicBool,
    client_w: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    shared: Arc<Shared>,
    cut: watch::Receiver<u64>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_r, client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let conn = Arc::new(Conn {
        discard: AtomicBool::new(false),
        ssl_answer_due: AtomicBool::new(false),
        opaque: AtomicBool::new(false),
        client_w: tokio::sync::Mutex::new(Some(client_w)),
    });
    // Either direction ends the connection by sending `true`.
    let (end_tx, end_rx) = watch::channel(false);
    let end_tx = Arc::new(end_tx);

    let upstream = {
        let (conn, shared, end_tx) = (conn.clone(), shared.clone(), end_tx.clone());
        let (mut end_rx, mut cut) = (end_rx.clone(), cut.clone());
        async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut started = false;
            let (mut marked, mut queried, mut stalled) = (false, false, false);
            let mut copy_bytes: u64 = 0;
            loop {
                let n = tokio::select! {
                    _ = end_rx.changed() => return,
                    _ = cut.changed() => { let _ = end_tx.send(true); return; }
                    r = client_r.read(&mut chunk) => match r { Ok(0) | Err(_) => { let _ = end_tx.send(true); return; } Ok(n) => n },
                };
                if stalled {
                    continue;
                }
                if conn.opaque.load(Ordering::SeqCst) {
                    if server_w.write_all(&chunk[..n]).await.is_err() {
                        let _ = end_tx.send(true);
                        return;
                    }
                    continue;
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut out: Vec<u8> = Vec::new();
                loop {
                    // One complete message, or wait for more bytes.
                    let (len, typed) = if started {
                        if buf.len() < 5 {
                            break;
                        }
                        (1 + be32(&buf[1..5]), true)
                    } else {
                        if buf.len() < 8 {
                            break;
                        }
                        (be32(&buf[0..4]), false)
                    };
                    if buf.len() < len {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if !typed {
                        let code = be32(&msg[4..8]) as u32;
                        if code == SSL_REQUEST || code == GSSENC_REQUEST {
                            conn.ssl_answer_due.store(true, Ordering::SeqCst);
                        } else {
                            started = true;
                        }
                        out.extend_from_slice(&msg);
                        continue;
                    }
                    let kind = msg[0];
                    let body = &msg[5..];
                    let is_query = matches!(kind, b'Q' | b'P' | b'B');
                    let mut action = None;
                    if kind == b'd' {
                        copy_bytes += body.len() as u64;
                        action = shared
                            .take(|t| matches!(t, Trigger::ClientCopyBytes(n) if copy_bytes >= *n));
                    } else if is_query {
                        let first = !queried;
                        queried = true;
                        action = shared.take(|t| match t {
                            Trigger::Query(all) => all.iter().all(|s| contains(body, s)),
                            Trigger::QueryAfter { then, .. } => marked && contains(body, then),
                            Trigger::FirstQuery => first,
                            _ => false,
                        });
                        if !marked {
                            let faults = shared.faults.lock().unwrap_or_else(|p| p.into_inner());
                            marked = faults.iter().any(|f| {
                                f.times > 0
                                    && matches!(&f.when, Trigger::QueryAfter { after, .. } if contains(body, after))
                            });
                        }
                    }
                    match action {
                        None => out.extend_from_slice(&msg),
                        Some(Action::Stall) => {
                            stalled = true;
                            buf.clear();
                            break;
                        }
                        Some(Action::Cut) => {
                            let _ = server_w.write_all(&out).await;
                            let _ = end_tx.send(true);
                            return;
                        }
                        Some(Action::LoseReply) => {
                            // The client goes first, so no byte of the reply reaches it.
                            conn.discard.store(true, Ordering::SeqCst);
                            drop(conn.client_w.lock().await.take());
                            out.extend_from_slice(&msg);
                            let _ = server_w.write_all(&out).await;
                            // Keep the server's side open until it has answered (the reader
                            // below ends the connection then).
                            let _ = end_rx.changed().await;
                            return;
                        }
                    }
                }
                if !out.is_empty() && server_w.write_all(&out).await.is_err() {
                    let _ = end_tx.send(true);
                    return;
                }
            }
        }
    };

    let downstream = {
        let (conn, shared, end_tx) = (conn.clone(), shared.clone(), end_tx.clone());
        let (mut end_rx, mut cut) = (end_rx.clone(), cut.clone());
        async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut copy_bytes: u64 = 0;
            loop {
                let n = tokio::select! {
                    _ = end_rx.changed() => return,
                    _ = cut.changed() => { let _ = end_tx.send(true); return; }
                    r = server_r.read(&mut chunk) => match r { Ok(0) | Err(_) => { let _ = end_tx.send(true); return; } Ok(n) => n },
                };
                let mut out: Vec<u8> = Vec::new();
                let mut raw = &chunk[..n];
                if conn.ssl_answer_due.swap(false, Ordering::SeqCst) {
                    if raw[0] == b'S' {
                        conn.opaque.store(true, Ordering::SeqCst);
                    }
                    out.push(raw[0]);
                    raw = &raw[1..];
                }
                if conn.opaque.load(Ordering::SeqCst) {
                    out.extend_from_slice(raw);
                } else {
                    buf.extend_from_slice(raw);
                    while buf.len() >= 5 {
                        let len = 1 + be32(&buf[1..5]);
                        if buf.len() < len {
                            break;
                        }
                        let msg: Vec<u8> = buf.drain(..len).collect();
                        if msg[0] == b'd' {
                            copy_bytes += (len - 5) as u64;
                            if shared
                                .take(|t| matches!(t, Trigger::ServerCopyBytes(n) if copy_bytes >= *n))
                                .is_some()
                            {
                                let _ = end_tx.send(true);
                                return;
                            }
                        }
                        let ready = msg[0] == b'Z';
                        out.extend_from_slice(&msg);
                        if ready && conn.discard.load(Ordering::SeqCst) {
                            // The lost reply is complete: the server has done the work.
                            let _ = end_tx.send(true);
                            return;
                        }
                    }
                }
                if conn.discard.load(Ordering::SeqCst) {
                    continue;
                }
                let mut w = conn.client_w.lock().await;
                let Some(client_w) = w.as_mut() else { continue };
                if !out.is_empty() && client_w.write_all(&out).await.is_err() {
                    let _ = end_tx.send(true);
                    return;
                }
            }
        }
    };
    tokio::join!(upstream, downstream);
}

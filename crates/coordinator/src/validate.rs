//! Checks on a submitted job before anything is stored, each failing with one line that says
//! what is wrong and what to do.
//!
//! URLs go through the one parser for a worker's URLs ([`ConnUrl::parse_for_worker`]), which
//! the CLI applies before it submits and the worker parses with, so what passes here is what the
//! worker will connect with. Passwords are opaque: `;`, `&&` or `$(` in one is a password, not
//! an attack, because nothing here or in the worker hands a URL to a shell.

use job_model::api::SubmitRequest;
use job_model::{Command, ConnUrl, FilterSpec, Options};

use crate::error::ApiError;

/// The longest connection URL accepted.
pub const MAX_URL_LEN: usize = 4096;
/// The most patterns in any one filter list.
pub const MAX_PATTERNS: usize = 1000;
/// The longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// The longest time a job may be given.
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// The instance types a job may ask for unless the operator says otherwise: the general-purpose,
/// compute- and memory-optimised families up to 16 vCPUs (what a copy can use: it is bound by the
/// network and the two servers), including every type the size-based choice picks.
pub const DEFAULT_ALLOWED_INSTANCE_TYPES: &[&str] = &[
    "t3.medium",
    "t3.large",
    "t3.xlarge",
    "t3.2xlarge",
    "c5.large",
    "c5.xlarge",
    "c5.2xlarge",
    "c5.4xlarge",
    "c6i.large",
    "c6i.xlarge",
    "c6i.2xlarge",
    "c6i.4xlarge",
    "c7i.large",
    "c7i.xlarge",
    "c7i.2xlarge",
    "c7i.4xlarge",
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "m5.4xlarge",
    "m6i.large",
    "m6i.xlarge",
    "m6i.2xlarge",
    "m6i.4xlarge",
    "m7i.large",
    "m7i.xlarge",
    "m7i.2xlarge",
    "m7i.4xlarge",
    "r6i.large",
    "r6i.xlarge",
    "r6i.2xlarge",
    "r6i.4xlarge",
];

/// A submit that passed every check.
#[derive(Debug)]
pub struct Valid {
    /// Parsed source URL.
    pub source: ConnUrl,
    /// Parsed target URL.
    pub target: ConnUrl,
}

fn url(field: &str, text: &str) -> Result<ConnUrl, ApiError> {
    if text.chars().count() > MAX_URL_LEN {
        return Err(ApiError::invalid(format!(
            "{field} is longer than {MAX_URL_LEN} characters"
        )));
    }
    ConnUrl::parse_for_worker(text).map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

fn filter(f: &FilterSpec) -> Result<(), ApiError> {
    for (name, list) in [
        ("include_tables", &f.include_tables),
        ("exclude_tables", &f.exclude_tables),
        ("table_filters", &f.table_filters),
        ("schema_only_tables", &f.schema_only_tables),
    ] {
        if list.len() > MAX_PATTERNS {
            return Err(ApiError::invalid(format!(
                "filter.{name} has {} entries; at most {MAX_PATTERNS}",
                list.len()
            )));
        }
    }
    job_model::Filter::from_args(
        &f.include_tables,
        &f.exclude_tables,
        &f.schema_only_tables,
        &f.table_filters,
    )
    .map(|_| ())
    .map_err(|e| ApiError::invalid(format!("filter: {e}")))
}

/// What each command can be given.
fn command(req: &SubmitRequest) -> Result<(), ApiError> {
    match req.command {
        Command::Init => Ok(()),
        Command::Sync => Err(ApiError::invalid(
            "command sync is not run by a worker: run `postgres-seren-replicator sync` from a \
             machine that reaches both databases (replication itself runs in the target server)",
        )),
        Command::Verify if !req.filter.table_filters.is_empty() => Err(ApiError::invalid(
            "filter.table_filters does not apply to verify, which compares whole tables; \
             leave it out, or exclude the filtered tables with filter.exclude_tables",
        )),
        Command::Validate if !req.filter.is_empty() => Err(ApiError::invalid(
            "validate checks the whole databases and takes no filter; leave filter out",
        )),
        Command::Verify | Command::Validate => Ok(()),
    }
}

fn options(
    command: Command,
    o: &Options,
    allowed_instance_types: &[String],
) -> Result<(), ApiError> {
    o.check(command)
        .map_err(|p| ApiError::invalid(p.to_string()))?;
    if let Some(t) = o.timeout_seconds {
        if t == 0 || t > MAX_TIMEOUT_SECONDS {
            return Err(ApiError::invalid(format!(
                "options.timeout_seconds is {t}; give 1 to {MAX_TIMEOUT_SECONDS} (7 days)"
            )));
        }
    }
    if let Some(t) = &o.instance_type {
        let ok = t.len() <= 32
            && t.split_once('.').is_some_and(|(family, size)| {
                !family.is_empty()
                    && !size.is_empty()
                    && t.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                    })
            });
        if !ok {
            return Err(ApiError::invalid(format!(
                "options.instance_type '{t}' is not an EC2 instance type such as c5.2xlarge"
            )));
        }
        if !allowed_instance_types.iter().any(|a| a == t) {
            return Err(ApiError::invalid(format!(
                "options.instance_type '{t}' is not one this deployment allows ({}); choose one \
                 of those, or ask the operator to add it to allowed_instance_types",
                allowed_instance_types.join(", ")
            )));
        }
    }
    Ok(())
}

/// Check a submit.
///
/// # Errors
/// A 400 naming the field and the fix.
pub fn submit(req: &SubmitRequest, allowed_instance_types: &[String]) -> Result<Valid, ApiError> {
    command(req)?;
    let source = url("source_url", &req.source_url)?;
    let target = url("target_url", &req.target_url)?;
    if source.host.eq_ignore_ascii_case(&target.host)
        && source.port == target.port
        && source.dbname == target.dbname
    {
        return Err(ApiError::invalid(
            "source_url and target_url name the same database; the target must be another one",
        ));
    }
    filter(&req.filter)?;
    options(req.command, &req.options, allowed_instance_types)?;
    Ok(Valid { source, target })
}

/// Check an `Idempotency-Key` header value.
///
/// # Errors
/// A 400 when it is empty, too long or not printable ASCII.
pub fn idempotency_key(v: &str) -> Result<String, ApiError> {
    if v.is_empty() || v.len() > MAX_IDEMPOTENCY_KEY_LEN || !v.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters \
             without spaces (a UUID is a good choice)"
        )));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        DEFAULT_ALLOWED_INSTANCE_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect()
    }

    fn submit_any(r: &SubmitRequest) -> Result<Valid, ApiError> {
        submit(r, &allowed())
    }

    fn req(source: &str, target: &str) -> SubmitRequest {
        SubmitRequest {
            command: Command::Init,
            source_url: source.into(),
            target_url: target.into(),
            options: Options::default(),
            filter: FilterSpec::default(),
        }
    }

    #[test]
    fn shell_metacharacters_in_passwords_are_just_passwords() {
        for pw in ["p%3Bx", "a%26%26b", "%24(reboot)", "%60id%60", "x'%22y"] {
            let r = req(
                &format!("postgresql://app:{pw}@src.example.com:5432/db"),
                "postgresql://app:pw@[2001:db8::1]:5433/db",
            );
            let v = submit_any(&r).expect(pw);
            assert!(v.source.password.is_some());
            assert_eq!(v.target.host, "2001:db8::1");
        }
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        let cases = [
            (
                "mysql://u:secretpw@h/db",
                "source_url: must start with postgresql://",
            ),
            (
                "postgresql://u:secretpw@h/db?sslmode=sometimes",
                "source_url: sslmode",
            ),
            ("postgresql://h/db", "no user name"),
            ("postgresql://u:secretpw@h/db?host=/tmp", "Unix socket"),
            (
                "postgresql://u:secretpw@h/db?sslrootcert=/etc/ca.pem",
                "sslrootcert",
            ),
        ];
        for (url, want) in cases {
            let err = submit_any(&req(url, "postgresql://u@t/db")).expect_err(url);
            assert!(err.message.contains(want), "{url}: {}", err.message);
            assert!(!err.message.contains("secretpw"), "{}", err.message);
        }
        let err = submit_any(&req("postgresql://u@h:5432/db", "postgresql://v@H:5432/db"))
            .expect_err("same");
        assert!(err.message.contains("same database"));
    }

    #[test]
    fn filters_and_options_are_checked() {
        let mut r = req("postgresql://u@s/db", "postgresql://u@t/db");
        r.filter.include_tables = vec!["public.\"unclosed".into()];
        assert!(submit_any(&r)
            .expect_err("glob")
            .message
            .contains("unclosed"));
        r.filter.include_tables.clear();
        r.filter.table_filters = vec!["no-colon".into()];
        assert!(submit_any(&r).is_err());
        r.filter.table_filters.clear();
        r.options.jobs = Some(0);
        assert!(submit_any(&r)
            .expect_err("jobs")
            .message
            .contains("options.jobs"));
        r.options.jobs = Some(8);
        r.options.instance_type = Some("c5.2xlarge; reboot".into());
        assert!(submit_any(&r).is_err());
        // Well formed but not allowed: any key could otherwise ask for a GPU fleet.
        r.options.instance_type = Some("p5.48xlarge".into());
        let err = submit_any(&r).expect_err("not allowed");
        assert!(
            err.message.contains("not one this deployment allows"),
            "{}",
            err.message
        );
        assert!(
            submit(&r, &["p5.48xlarge".to_owned()]).is_ok(),
            "the operator may allow it"
        );
        r.options.instance_type = Some("c5.2xlarge".into());
        r.options.timeout_seconds = Some(MAX_TIMEOUT_SECONDS + 1);
        assert!(submit_any(&r).is_err());
        r.options.timeout_seconds = Some(3600);
        assert!(submit_any(&r).is_ok());
        r.options.chunk_rows = Some(100_000);
        assert!(submit_any(&r)
            .expect_err("a verify option on init")
            .message
            .contains("options.chunk_rows does not apply to init"));
        r.command = Command::Verify;
        assert!(submit_any(&r).is_ok());
        r.options.chunk_rows = Some(0);
        assert!(submit_any(&r)
            .expect_err("chunk")
            .message
            .contains("options.chunk_rows is 0"));
    }

    #[test]
    fn each_command_takes_what_it_can_use() {
        let mut r = req("postgresql://u@s/db", "postgresql://u@t/db");
        r.command = Command::Sync;
        assert!(submit_any(&r)
            .expect_err("sync")
            .message
            .contains("postgres-seren-replicator sync"));
        r.command = Command::Verify;
        r.filter.exclude_tables = vec!["audit.*".into()];
        assert!(submit_any(&r).is_ok());
        r.filter.table_filters = vec!["public.t:id > 5".into()];
        assert!(submit_any(&r)
            .expect_err("verify with a row filter")
            .message
            .contains("table_filters does not apply to verify"));
        r.command = Command::Validate;
        assert!(submit_any(&r)
            .expect_err("validate with a filter")
            .message
            .contains("takes no filter"));
        r.filter = FilterSpec::default();
        assert!(submit_any(&r).is_ok());
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(idempotency_key("3f1c2a9e-retry").is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key("has space").is_err());
        assert!(idempotency_key(&"x".repeat(129)).is_err());
    }
}

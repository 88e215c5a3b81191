//! A job's wire description ([`job_model::JobSpec`]) into the engine's options: the one
//! conversion that the command line (for local runs) and the worker (for remote ones) share, so
//! that a flag means the same wherever the copy runs and no option is dropped on one path.
//!
//! What only a local run can have (`--resume`, another URL for the target to reach the source
//! by, a `pg_dump` directory of this machine) is set by the caller on the options returned.

use job_model::{CopyFormat, FilterSpec, JobSpec, Options, SyncChoice};

use crate::conninfo::ConnUrl;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::init::{FormatChoice, InitOptions};
use crate::plan::SplitSize;
use crate::verify::VerifyOptions;

/// The table selection of a job.
///
/// # Errors
/// `Usage` when a pattern or row filter does not parse.
pub fn filter(spec: &FilterSpec) -> Result<Filter> {
    Ok(Filter::from_args(
        &spec.include_tables,
        &spec.exclude_tables,
        &spec.schema_only_tables,
        &spec.table_filters,
    )?)
}

fn checked(spec: &JobSpec) -> Result<&Options> {
    spec.options
        .check(spec.command)
        .map_err(|p| Error::Usage(p.as_flag()))?;
    Ok(&spec.options)
}

fn jobs(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// An `init` job's options; every field of [`Options`] that applies to `init` is carried, the
/// rest keep [`InitOptions::new`]'s defaults.
///
/// # Errors
/// `Usage` when an option is out of range or does not apply to `init`, or the filter does not
/// parse.
pub fn init_options(source: ConnUrl, target: ConnUrl, spec: &JobSpec) -> Result<InitOptions> {
    let o = checked(spec)?;
    let mut opts = InitOptions::new(source, target);
    opts.filter = filter(&spec.filter)?;
    if let Some(j) = o.jobs {
        opts.jobs = jobs(j);
    }
    opts.drop_existing = o.drop_existing;
    opts.no_owner = o.no_owner;
    opts.no_privileges = o.no_privileges;
    if let Some(f) = o.copy_format {
        opts.format = match f {
            CopyFormat::Auto => FormatChoice::Auto,
            CopyFormat::Text => FormatChoice::Text,
        };
    }
    if let Some(b) = o.split_tables_larger_than_bytes {
        opts.split.size = if b == 0 {
            SplitSize::Never
        } else {
            SplitSize::LargerThan(b)
        };
    }
    if let Some(p) = o.max_parts {
        opts.split.max_parts = p;
    }
    if let Some(r) = o.retries {
        opts.retries = r;
    }
    if let Some(m) = &o.maintenance_work_mem {
        opts.maintenance_work_mem.clone_from(m);
    }
    opts.sync = match o.sync {
        None | Some(SyncChoice::Off) => crate::sync::SyncMode::Off,
        Some(SyncChoice::Auto) => crate::sync::SyncMode::Auto,
        Some(SyncChoice::Required) => crate::sync::SyncMode::Required,
    };
    Ok(opts)
}

/// A `verify` job's options.
///
/// # Errors
/// As [`init_options`], for `verify`.
pub fn verify_options(source: ConnUrl, target: ConnUrl, spec: &JobSpec) -> Result<VerifyOptions> {
    let o = checked(spec)?;
    let mut opts = VerifyOptions::new(source, target);
    opts.filter = filter(&spec.filter)?;
    if let Some(j) = o.jobs {
        opts.jobs = jobs(j);
    }
    if let Some(c) = o.chunk_rows {
        opts.chunk_rows = c;
    }
    if let Some(t) = o.catch_up_timeout_seconds {
        opts.catch_up_timeout = std::time::Duration::from_secs(t);
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use job_model::Command;

    fn url(s: &str) -> ConnUrl {
        ConnUrl::parse(s).expect("url")
    }

    #[test]
    fn every_init_option_reaches_the_engine() {
        let spec = JobSpec {
            command: Command::Init,
            filter: FilterSpec {
                include_tables: vec!["public.*".into()],
                exclude_tables: vec!["public.audit".into()],
                table_filters: vec!["public.orders:id > 5".into()],
                schema_only_tables: vec!["public.log".into()],
            },
            options: Options {
                jobs: Some(3),
                drop_existing: true,
                no_owner: true,
                no_privileges: true,
                copy_format: Some(CopyFormat::Text),
                split_tables_larger_than_bytes: Some(0),
                max_parts: Some(7),
                retries: Some(9),
                maintenance_work_mem: Some("1GB".into()),
                instance_type: Some("c5.large".into()),
                source_size_bytes: Some(10),
                timeout_seconds: Some(60),
                ..Options::default()
            },
        };
        let o = init_options(
            url("postgresql://u@s/db"),
            url("postgresql://u@t/db"),
            &spec,
        )
        .expect("options");
        assert_eq!(o.jobs, 3);
        assert!(o.drop_existing && o.no_owner && o.no_privileges);
        assert_eq!(o.format, FormatChoice::Text);
        assert_eq!((o.split.size, o.split.max_parts), (SplitSize::Never, 7));
        assert_eq!(o.retries, 9);
        assert_eq!(o.maintenance_work_mem, "1GB");
        assert_eq!(
            o.filter.describe(),
            "--include-tables public.* --exclude-tables public.audit --schema-only-tables \
             public.log --table-filter 'public.orders:id > 5'"
        );
        // Unset options keep the engine's defaults.
        let plain = JobSpec {
            command: Command::Init,
            filter: FilterSpec::default(),
            options: Options::default(),
        };
        let d = init_options(
            url("postgresql://u@s/db"),
            url("postgresql://u@t/db"),
            &plain,
        )
        .expect("defaults");
        let n = InitOptions::new(url("postgresql://u@s/db"), url("postgresql://u@t/db"));
        assert_eq!((d.jobs, d.retries, d.split), (n.jobs, n.retries, n.split));
        assert_eq!(
            (d.format, d.maintenance_work_mem),
            (n.format, n.maintenance_work_mem)
        );
    }

    #[test]
    fn a_bad_option_names_its_flag() {
        let spec = JobSpec {
            command: Command::Init,
            filter: FilterSpec::default(),
            options: Options {
                split_tables_larger_than_bytes: Some(1),
                max_parts: Some(0),
                ..Options::default()
            },
        };
        let e = init_options(
            url("postgresql://u@s/db"),
            url("postgresql://u@t/db"),
            &spec,
        )
        .expect_err("max_parts 0");
        assert!(e.to_string().contains("--max-parts is 0"), "{e}");
        let verify = JobSpec {
            command: Command::Verify,
            filter: FilterSpec::default(),
            options: Options {
                chunk_rows: Some(5000),
                catch_up_timeout_seconds: Some(7),
                jobs: Some(2),
                ..Options::default()
            },
        };
        let v = verify_options(
            url("postgresql://u@s/db"),
            url("postgresql://u@t/db"),
            &verify,
        )
        .expect("verify");
        assert_eq!((v.jobs, v.chunk_rows), (2, 5000));
        assert_eq!(v.catch_up_timeout, std::time::Duration::from_secs(7));
    }
}

//! The Terraform in `infra/` configures the Lambdas only through environment variables and
//! routes the API through API Gateway routes; both must match what the binaries read and what
//! the Router serves. No terraform binary can run here, so the HCL is parsed (hcl-rs) and the
//! names are compared with the built binaries' own `--help` and with `docs/openapi.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use hcl::expr::{Expression, ObjectKey, TraversalOperator};

/// Read by tracing's EnvFilter in `config::init_logging`, not by clap.
const NOT_CLAP: [&str; 1] = ["RUST_LOG"];

fn repo() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.join("../..")
}

fn body(file: &str) -> hcl::Body {
    let path = repo().join("infra").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    hcl::parse(&text).unwrap_or_else(|e| panic!("{path:?} does not parse: {e}"))
}

fn locals(body: &hcl::Body) -> BTreeMap<String, Expression> {
    body.blocks()
        .filter(|b| b.identifier() == "locals")
        .flat_map(|b| b.body().attributes())
        .map(|a| (a.key().to_owned(), a.expr().clone()))
        .collect()
}

/// The keys an environment expression can produce, with the literal value where it is one:
/// object literals, `merge(…)` of them, conditionals, and `local.X` references.
fn env_keys(
    expr: &Expression,
    locals: &BTreeMap<String, Expression>,
    out: &mut BTreeMap<String, Option<String>>,
) {
    match expr {
        Expression::Object(obj) => {
            for (k, v) in obj {
                let key = match k {
                    ObjectKey::Identifier(id) => id.to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.clone(),
                    other => panic!("environment key is not a plain name: {other:?}"),
                };
                let literal = match v {
                    Expression::String(s) => Some(s.clone()),
                    _ => None,
                };
                out.insert(key, literal);
            }
        }
        Expression::FuncCall(call) => {
            for arg in &call.args {
                env_keys(arg, locals, out);
            }
        }
        Expression::Conditional(c) => {
            env_keys(&c.true_expr, locals, out);
            env_keys(&c.false_expr, locals, out);
        }
        Expression::Parenthesis(inner) => env_keys(inner, locals, out),
        Expression::Traversal(t) => {
            let is_local = matches!(&t.expr, Expression::Variable(v) if v.as_str() == "local");
            match t.operators.as_slice() {
                [TraversalOperator::GetAttr(name)] if is_local => {
                    let target = locals
                        .get(name.as_str())
                        .unwrap_or_else(|| panic!("local.{name} is not defined"));
                    env_keys(target, locals, out);
                }
                _ => panic!("environment refers to something other than a local: {t:?}"),
            }
        }
        other => panic!("unexpected environment expression: {other:?}"),
    }
}

/// The environment a Lambda resource sets, resolved through the locals.
fn lambda_env(body: &hcl::Body, function: &str) -> BTreeMap<String, Option<String>> {
    let locals = locals(body);
    let resource = body
        .blocks()
        .find(|b| {
            b.identifier() == "resource"
                && b.labels().len() == 2
                && b.labels()[0].as_str() == "aws_lambda_function"
                && b.labels()[1].as_str() == function
        })
        .unwrap_or_else(|| panic!("no aws_lambda_function.{function}"));
    let variables = resource
        .body()
        .blocks()
        .find(|b| b.identifier() == "environment")
        .and_then(|env| env.body().attributes().find(|a| a.key() == "variables"))
        .unwrap_or_else(|| panic!("aws_lambda_function.{function} has no environment"));
    let mut out = BTreeMap::new();
    env_keys(variables.expr(), &locals, &mut out);
    out
}

/// The environment variables a binary's clap arguments read, from its own `--help`.
fn reads(binary: &str) -> BTreeSet<String> {
    let out = Command::new(binary)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{binary} --help failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let names: BTreeSet<String> = flat
        .split("[env: ")
        .skip(1)
        // `[env: NAME=value]`, or `[env: NAME]` where values are hidden.
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 5, "no env names found in {binary} --help");
    names
}

fn check(
    name: &str,
    env: &BTreeMap<String, Option<String>>,
    binary_reads: &BTreeSet<String>,
    required: &[&str],
) {
    let unknown: Vec<&String> = env
        .keys()
        .filter(|k| !binary_reads.contains(*k) && !NOT_CLAP.contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "Terraform sets {unknown:?} on {name}, which it does not read (it reads {binary_reads:?})"
    );
    for r in required {
        assert!(env.contains_key(*r), "Terraform does not set {r} on {name}");
    }
    assert_eq!(
        env.get("SEREN_PROVISIONER"),
        Some(&Some("ec2".to_owned())),
        "{name} must launch EC2 workers"
    );
}

#[test]
fn the_lambdas_environment_names_are_the_ones_the_binaries_read() {
    let body = body("lambda.tf");
    let coordinator = lambda_env(&body, "coordinator");
    let reaper = lambda_env(&body, "reaper");
    check(
        "the coordinator",
        &coordinator,
        &reads(env!("CARGO_BIN_EXE_seren-coordinator")),
        &[
            "SEREN_API_KEY_SHA256",
            "SEREN_JOBS_TABLE",
            "SEREN_KMS_KEY_ID",
            "SEREN_PROVISIONER",
            "SEREN_LAUNCH_TEMPLATE",
            "SEREN_WORKER_ROLE_ARN",
            "SEREN_MAX_CONCURRENT_JOBS",
            "SEREN_JOB_RETENTION_DAYS",
            "SEREN_USE_SPOT",
            "SEREN_WORKER_INSTANCE_TYPE",
            "SEREN_SUBNET_IDS",
        ],
    );
    check(
        "the reaper",
        &reaper,
        &reads(env!("CARGO_BIN_EXE_seren-reaper")),
        &[
            "SEREN_JOBS_TABLE",
            "SEREN_KMS_KEY_ID",
            "SEREN_PROVISIONER",
            "SEREN_LAUNCH_TEMPLATE",
            "SEREN_WORKER_ROLE_ARN",
            "SEREN_HEARTBEAT_TIMEOUT_SECS",
        ],
    );
    assert!(
        !coordinator.contains_key("SEREN_API_KEY") && !reaper.contains_key("SEREN_API_KEY"),
        "the Lambdas get the key's hash, never the key"
    );
}

#[test]
fn the_api_routes_are_the_routers_paths() {
    let body = body("api_gateway.tf");
    let routes: BTreeSet<String> = match locals(&body).get("api_routes") {
        Some(Expression::Array(items)) => items
            .iter()
            .map(|e| match e {
                Expression::String(s) => s.clone(),
                other => panic!("route is not a string: {other:?}"),
            })
            .collect(),
        other => panic!("local.api_routes is not a list: {other:?}"),
    };
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/openapi.json")).expect("openapi.json"),
    )
    .expect("openapi.json parses");
    let documented: BTreeSet<String> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    assert_eq!(routes, documented);
}

#!/usr/bin/env python3
"""Parse every Terraform and Packer file (python-hcl2) and check what the design promises of
them, since no terraform or packer binary can plan here. Prints one line per check; exits 1 on
the first file that does not parse or any promise that does not hold."""

import glob
import os
import sys

import hcl2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def clean(v):
    """python-hcl2 keeps the quotes of string literals and marks blocks; drop both."""
    if isinstance(v, dict):
        return {clean(k): clean(x) for k, x in v.items() if k != "__is_block__"}
    if isinstance(v, list):
        return [clean(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


def check(what, ok):
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def load_all():
    files = sorted(glob.glob(os.path.join(ROOT, "infra", "*.tf")))
    files += sorted(glob.glob(os.path.join(ROOT, "ami", "*.pkr.hcl")))
    if not files:
        sys.exit("check_hcl.py: no .tf or .pkr.hcl files found")
    parsed = {}
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                parsed[os.path.relpath(f, ROOT)] = clean(hcl2.load(fh))
        except Exception as e:  # noqa: BLE001 - any parse error is the finding
            sys.exit(f"check_hcl.py: {os.path.relpath(f, ROOT)} does not parse: {e}")
        print(f"  parsed {os.path.relpath(f, ROOT)}")
    return parsed


def blocks(parsed, kind, type_):
    """{name: body} of every `kind "type_" "name"` block across the infra files."""
    out = {}
    for path, doc in parsed.items():
        if not path.startswith("infra/"):
            continue
        for entry in doc.get(kind, []):
            for t, named in entry.items():
                if t == type_:
                    out.update(named)
    return out


def locals_of(parsed):
    """Every `locals` value across the infra files."""
    out = {}
    for path, doc in parsed.items():
        if path.startswith("infra/"):
            for entry in doc.get("locals", []):
                out.update(entry)
    return out


def statements(doc):
    return doc.get("statement", [])


def actions_of(doc):
    return {a for s in statements(doc) for a in s.get("actions", [])}


def main():
    parsed = load_all()
    res = lambda t: blocks(parsed, "resource", t)  # noqa: E731
    data = lambda t: blocks(parsed, "data", t)  # noqa: E731

    table = res("aws_dynamodb_table")["jobs"]
    gsis = {g["name"]: g for g in table["global_secondary_index"]}
    check("table: on demand, hash key job_id", table["billing_mode"] == "PAY_PER_REQUEST" and table["hash_key"] == "job_id")
    for name, hk in (("status-created_at-index", "status"), ("owner-created_at-index", "owner")):
        g = gsis.get(name, {})
        check(f"table: GSI {name} ({hk}, created_at, ALL)",
              g.get("hash_key") == hk and g.get("range_key") == "created_at" and g.get("projection_type") == "ALL")
    check("table: TTL on ttl", table["ttl"][0] == {"attribute_name": "ttl", "enabled": True})
    check("table: point-in-time recovery", table["point_in_time_recovery"][0]["enabled"] is True)
    check("table: KMS encryption", table["server_side_encryption"][0]["enabled"] is True
          and "aws_kms_key" in table["server_side_encryption"][0]["kms_key_arn"])

    lt = res("aws_launch_template")["worker"]
    md = lt["metadata_options"][0]
    ebs = lt["block_device_mappings"][0]["ebs"][0]
    check("launch template: IMDSv2 required, hop limit 1", md["http_tokens"] == "required" and md["http_put_response_hop_limit"] == 1)
    check("launch template: shutdown terminates", lt["instance_initiated_shutdown_behavior"] == "terminate")
    check("launch template: encrypted gp3 root sized by variable",
          ebs["encrypted"] is True and ebs["volume_type"] == "gp3" and ebs["volume_size"] == "${var.worker_root_volume_gb}")
    check("launch template: AMI and instance profile from Terraform",
          lt["image_id"] == "${var.worker_ami_id}" and "aws_iam_instance_profile.worker" in lt["iam_instance_profile"][0]["arn"])

    sg = res("aws_security_group")["worker"]
    check("worker security group: no ingress", "ingress" not in sg)
    egress_ports = {e["from_port"] for e in sg.get("egress", []) if isinstance(e.get("from_port"), int)}
    dynamic_egress = [d for d in sg.get("dynamic", []) if "egress" in d]
    check("worker security group: egress HTTPS and the PostgreSQL ports only",
          egress_ports == {443} and len(dynamic_egress) == 1
          and dynamic_egress[0]["egress"]["for_each"] == "${toset(var.database_ports)}")

    https = [e for e in sg.get("egress", []) if e.get("from_port") == 443]
    check("worker security group: with private_networking, HTTPS only to the VPC endpoints",
          len(https) == 1 and https[0]["cidr_blocks"] == "${local.make_endpoints ? [] : var.https_cidr_blocks}"
          and "aws_security_group.endpoints" in https[0]["security_groups"]
          and "aws_vpc_endpoint.dynamodb" in https[0]["prefix_list_ids"])
    endpoints = res("aws_vpc_endpoint")
    gateway = endpoints.get("dynamodb", {})
    check("private networking: a DynamoDB gateway endpoint, only with private_networking, limited by a policy",
          gateway.get("vpc_endpoint_type") == "Gateway" and gateway.get("count") == "${local.make_endpoints ? 1 : 0}"
          and "dynamodb_endpoint" in gateway.get("policy", ""))
    interface = endpoints.get("interface", {})
    check("private networking: KMS, CloudWatch Logs and EC2 interface endpoints with private DNS",
          interface.get("vpc_endpoint_type") == "Interface" and interface.get("private_dns_enabled") is True
          and "local.make_endpoints" in interface.get("for_each", "")
          and set(locals_of(parsed).get("endpoint_services", [])) >= {"kms", "logs", "ec2"})
    preconditions = [p["condition"] for p in lt.get("lifecycle", [{}])[0].get("precondition", [])]
    check("private networking: no worker subnet may give a public IP",
          any("map_public_ip_on_launch" in c for c in preconditions))

    docs = data("aws_iam_policy_document")
    worker = docs["worker"]
    check("worker role: no EC2 and no KMS permission",
          not any(a.startswith(("ec2:", "kms:", "iam:")) for a in actions_of(worker)))
    check("worker role: only GetItem/UpdateItem on the table",
          {a for a in actions_of(worker) if a.startswith("dynamodb:")} == {"dynamodb:GetItem", "dynamodb:UpdateItem"})
    worker_updates = [st for st in statements(worker) if "dynamodb:UpdateItem" in st.get("actions", [])]
    check("worker role: every UpdateItem limited to the attributes a worker owns",
          worker_updates and all(any(c["variable"] == "dynamodb:Attributes" and c["test"] == "ForAllValues:StringEquals"
                                     for c in st.get("condition", [])) for st in worker_updates))
    ledger_updates = [st for st in worker_updates if st["resources"] == ["${aws_dynamodb_table.ledger.arn}"]]
    check("worker role: on the ledger, only the active-job counter",
          len(ledger_updates) == 1 and any(c["variable"] == "dynamodb:LeadingKeys" for c in ledger_updates[0]["condition"]))
    ledger = res("aws_dynamodb_table")["ledger"]
    check("ledger table: the jobs table's name + -ledger, hash key pk, TTL, PITR, KMS",
          ledger["name"] == "${var.jobs_table_name}-ledger" and ledger["hash_key"] == "pk"
          and ledger["ttl"][0] == {"attribute_name": "ttl", "enabled": True}
          and ledger["point_in_time_recovery"][0]["enabled"] is True
          and "aws_kms_key" in ledger["server_side_encryption"][0]["kms_key_arn"])

    coord = docs["coordinator"]
    common = docs["lambda_common"]
    # Launch rights live in one document both Lambdas include (the reaper starts the next
    # worker of a job whose worker was lost).
    launch = docs["launch_workers"]
    every = statements(coord) + statements(common) + statements(launch)
    check("coordinator and reaper: both take the launch rights from launch_workers",
          all("data.aws_iam_policy_document.launch_workers.json" in str(docs[n].get("source_policy_documents"))
              for n in ("coordinator", "reaper")))

    def stmts(action):
        return [s for s in every if action in s.get("actions", [])]

    run = stmts("ec2:RunInstances")
    check("RunInstances: only the launch template, or resources launched through it",
          run and all(s["resources"] == ["${local.launch_template_arn}"]
                      or any(c["variable"] == "ec2:LaunchTemplate" and c["values"] == ["${local.launch_template_arn}"]
                             for c in s.get("condition", []))
                      for s in run))
    for action in ("ec2:TerminateInstances",):
        st = stmts(action)
        check(f"{action}: only instances tagged ManagedBy",
              st and all(any(c["variable"] == "aws:ResourceTag/ManagedBy" and c["values"] == ["${local.managed_by_tag}"]
                             for c in s.get("condition", [])) for s in st))
    tags = stmts("ec2:CreateTags")
    check("CreateTags: only at launch, only with ManagedBy",
          tags and all({c["variable"] for c in s.get("condition", [])} >= {"ec2:CreateAction", "aws:RequestTag/ManagedBy"} for s in tags))
    passrole = stmts("iam:PassRole")
    check("PassRole: only the worker role, only to EC2",
          passrole and all(s["resources"] == ["${aws_iam_role.worker.arn}"] for s in passrole))
    kms_uses = [s for s in every if any(a in ("kms:Encrypt", "kms:Decrypt", "kms:CreateGrant") for a in s.get("actions", []))]
    for s in kms_uses:
        variables = {c["variable"] for c in s.get("condition", [])}
        if s["resources"] == ["${aws_kms_key.jobs.arn}"]:
            ok = "kms:EncryptionContextKeys" in variables or "kms:GrantConstraintType" in variables
            check(f"jobs key, {s['sid']}: bound to the job_id encryption context", ok)
        else:
            check(f"platform key, {s['sid']}: bound to an encryption context",
                  any(v.startswith("kms:EncryptionContext:") for v in variables))
    role_docs = ("coordinator", "reaper", "launch_workers", "lambda_common", "lambda_vpc", "worker")
    check("role policies: no wildcard action",
          not any("*" in a for name in role_docs for a in actions_of(docs[name])))

    lambdas = res("aws_lambda_function")
    coordinator = lambdas["coordinator"]
    check("coordinator Lambda: named seren-replication-coordinator on provided.al2023",
          coordinator["function_name"] == "${local.coordinator_name}" and coordinator["runtime"] == "provided.al2023")
    check("both Lambdas: architecture from a variable",
          all(fn["architectures"] == ["${var.lambda_architecture}"] for fn in lambdas.values()))
    groups = res("aws_cloudwatch_log_group")
    check("log groups: retention from log_retention_days (default 7)",
          all(g["retention_in_days"] == "${var.log_retention_days}" for g in groups.values()))
    variables = {}
    for path, doc in parsed.items():
        if not path.startswith("infra/"):
            continue
        for v in doc.get("variable", []):
            variables.update(v)
    check("variable log_retention_days defaults to 7", variables.get("log_retention_days", {}).get("default") == 7)
    for name in ("aws_region", "worker_instance_type", "worker_ami_id", "max_concurrent_jobs", "use_spot",
                 "subnet_ids", "job_retention_days", "lambda_architecture"):
        check(f"variable {name} exists with a description", bool(variables.get(name, {}).get("description")))
    outputs = {}
    for doc in parsed.values():
        for o in doc.get("output", []):
            outputs.update(o)
    check("output api_endpoint", "api_endpoint" in outputs)
    stage = res("aws_apigatewayv2_stage")["default"]
    check("API stage: $default, throttled, JSON access logs",
          stage["name"] == "$default" and stage["default_route_settings"][0]["throttling_rate_limit"] == "${var.api_throttle_rate}"
          and stage["access_log_settings"][0]["format"].startswith("${jsonencode("))
    check("API key: SSM SecureString, only its hash reaches the Lambda",
          res("aws_ssm_parameter")["api_key"]["type"] == "SecureString")

    packer = parsed.get("ami/worker.pkr.hcl", {})
    src = packer.get("source", [{}])[0].get("amazon-ebs", {}).get("worker", {})
    check("AMI name postgres-seren-replicator-worker-*",
          src.get("ami_name", "").startswith("postgres-seren-replicator-worker-"))

    with open(os.path.join(ROOT, "infra", "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    undocumented = [n for n in list(variables) + list(outputs) if f"| `{n}` |" not in readme]
    check("infra/README.md documents every input and output" + (f" (missing {undocumented})" if undocumented else ""),
          not undocumented)

    if failures:
        print(f"check_hcl.py: {len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

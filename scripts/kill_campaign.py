#!/usr/bin/env python3
"""The kill campaign's driver (run by scripts/kill-campaign.sh, which builds the source).

A baseline `init` measures when each phase starts and how long it takes; then each round starts
`init` (replication on) into a fresh target database, sends SIGKILL at a chosen point of a
chosen phase, recovers as a user would (`init --resume`, or a plain `init` when the target holds
nothing to resume), and checks:

- `verify` exits 0, and every table's row count and hash of its sorted rows are equal on both
  sides (rows lost or duplicated would change them);
- no replication slot of this tool on the source without a subscription using it, and no
  publication of this tool without its slot;
- on every source table, the application's UPDATE and DELETE still work (one row each, rolled
  back): none fails because the table was published without a replica identity.

With --writes, pgbench writes to the replicated tables (updates, inserts and deletes in `big`,
`accounts` and three small tables) from before each round's `init` until after its recovery,
so the kill, the gap before the resume and the resume itself all happen under writes; the rows
are then compared once the writes have stopped and replication has caught up, and the recovery
must have left the target replicating.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time

PHASES = ["preflight", "snapshot", "pre-data", "data", "post-data",
          "sequences+large objects", "analyze", "replication"]

# (phase, fraction of its baseline duration): 20 moments over every phase.
MOMENTS = [("preflight", 0.5), ("snapshot", 0.5), ("pre-data", 0.2), ("pre-data", 0.8),
           ("data", 0.02), ("data", 0.15), ("data", 0.3), ("data", 0.45), ("data", 0.6),
           ("data", 0.75), ("data", 0.9), ("post-data", 0.1), ("post-data", 0.4),
           ("post-data", 0.7), ("post-data", 0.95), ("sequences+large objects", 0.5),
           ("analyze", 0.1), ("analyze", 0.5), ("replication", 0.0), ("replication", 0.3)]


def psql(url, sql, check=True):
    out = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                         capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"psql {sql[:60]!r}: {out.stderr.strip()}")
    return out.stdout.strip()


def db(base, name):
    return f"{base}/{name}?sslmode=disable"


WRITES = """\\set id random(1, 400000)
\\set nid random(400001, 2000000000)
\\set a random(0, 999)
\\set s random(1, 100)
BEGIN;
UPDATE big SET note = md5(random()::text), payload = payload || '{"w": 1}' WHERE id = :id;
INSERT INTO big (id, account, note) VALUES (:nid, :a, 'written') ON CONFLICT (id) DO NOTHING;
DELETE FROM big WHERE id = :id + 7;
UPDATE accounts SET name = name || '.' WHERE id = :a;
UPDATE small_1 SET v = md5(random()::text) WHERE id = :s;
INSERT INTO small_150 (id, v) VALUES (:nid, 'w') ON CONFLICT (id) DO NOTHING;
DELETE FROM small_300 WHERE id = :s;
COMMIT;
"""


class Writer:
    """pgbench writing to the source at a fixed rate until stopped."""

    def __init__(self, pg_bindir, source, script):
        self.proc = subprocess.Popen(
            [os.path.join(pg_bindir, "pgbench"), "-n", "-c", "2", "-R", "40", "-T", "100000",
             "-f", script, source], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


class Tool:
    def __init__(self, args):
        self.bin = args.bin
        self.env = dict(os.environ, SEREN_PG_BINDIR=args.pg_bindir, SEREN_LOG="warn")
        self.split = args.split

    def command(self, source, target, *extra):
        return [self.bin, *extra[:1], "--source", source, "--target", target, *extra[1:]]

    def run(self, source, target, *extra):
        return subprocess.run(self.command(source, target, *extra), capture_output=True,
                              text=True, env=self.env)

    def start_init(self, source, target):
        cmd = self.command(source, target, "init", "--progress", "log",
                           "--split-tables-larger-than", self.split)
        return subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True, env=self.env)


def watch(proc, on_line):
    """Feed each stderr line of `proc` to on_line(t, line) as it comes."""
    started = time.monotonic()
    lines = []
    for line in proc.stderr:
        line = line.rstrip("\n")
        lines.append(line)
        on_line(time.monotonic() - started, line)
    return lines


def phase_of(line):
    for p in PHASES:
        if line == f"{p}: started":
            return p, "started"
        if line.startswith(f"{p}: done in"):
            return p, "done"
    return None, None


def baseline(tool, source, base):
    target = db(base, "baseline")
    proc = tool.start_init(source, target)
    starts, durations = {}, {}
    def on_line(t, line):
        p, what = phase_of(line)
        if what == "started":
            starts[p] = t
        elif what == "done":
            durations[p] = t - starts.get(p, t)
    began = time.monotonic()
    lines = watch(proc, on_line)
    proc.wait()
    if proc.returncode != 0:
        sys.exit("the baseline init failed:\n" + "\n".join(lines))
    total = time.monotonic() - began
    tool.run(source, target, "sync", "--stop")
    psql(db(base, "postgres"), "DROP DATABASE baseline WITH (FORCE)")
    return starts, durations, total


def table_hashes(url):
    tables = psql(url, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                       "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                       "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                       "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1").splitlines()
    script = "".join(
        f"SELECT '{t}', count(*), coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') "
        f"FROM ONLY {t} x;\n" for t in tables)
    out = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url],
                         input=script, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return dict((l.split("|", 1) for l in out.stdout.splitlines()))


def orphans(source, base):
    slots = psql(source, "SELECT slot_name FROM pg_replication_slots "
                         "WHERE slot_name LIKE 'seren\\_%'").splitlines()
    used = set(psql(db(base, "postgres"), "SELECT subslotname FROM pg_subscription").splitlines())
    pubs = psql(source, "SELECT pubname FROM pg_publication WHERE pubname LIKE 'seren\\_%'").splitlines()
    return [f"slot {s}" for s in slots if s not in used] + \
           [f"publication {p}" for p in pubs if p not in slots]


APP_WRITES = r"""
DO $$
DECLARE r record; broken text[] := '{}';
BEGIN
  FOR r IN SELECT c.oid::regclass AS t, (SELECT quote_ident(a.attname) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum LIMIT 1) AS col
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND n.nspname = 'public'
  LOOP
    BEGIN
      EXECUTE format('UPDATE %s SET %s = %s WHERE ctid = (SELECT ctid FROM %s LIMIT 1)',
                     r.t, r.col, r.col, r.t);
      EXECUTE format('DELETE FROM %s WHERE ctid = (SELECT ctid FROM %s LIMIT 1)', r.t, r.t);
      RAISE EXCEPTION USING ERRCODE = 'P0001';  -- undo this table's writes
    EXCEPTION
      WHEN object_not_in_prerequisite_state THEN broken := broken || r.t::text;
      WHEN raise_exception THEN NULL;
      WHEN foreign_key_violation THEN NULL;  -- the application's own constraint
    END;
  END LOOP;
  RAISE NOTICE 'broken:%', array_to_string(broken, ',');
END $$;
"""


def app_writes_broken(source):
    out = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", source,
                          "-c", APP_WRITES], capture_output=True, text=True)
    if out.returncode != 0:
        return ["(check failed: " + out.stderr.strip() + ")"]
    for line in out.stderr.splitlines():
        if "broken:" in line:
            rest = line.split("broken:", 1)[1].strip()
            return [t for t in rest.split(",") if t]
    return ["(no answer)"]


def replicating(target):
    """Whether `target` exists, holds no bookkeeping and is subscribed (a complete copy)."""
    out = subprocess.run(["psql", "-X", "-q", "-At", "-d", target, "-c",
                          "SELECT count(*) FROM pg_subscription WHERE subdbid = (SELECT oid FROM "
                          "pg_database WHERE datname = current_database()) AND NOT EXISTS "
                          "(SELECT 1 FROM pg_namespace WHERE nspname = '_seren_replicator')"],
                         capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "1"


def round_(tool, source, base, n, phase, delay, expected, writes=None):
    name = f"copy_{n}"
    target = db(base, name)
    writer = Writer(*writes) if writes else None
    proc = tool.start_init(source, target)
    state = {"current": None, "killed_in": None, "armed": False}
    def kill():
        state["killed_in"] = state["current"] or "preflight"
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            state["killed_in"] = None
    def on_line(t, line):
        p, what = phase_of(line)
        if what == "started":
            state["current"] = p
            if p == phase and not state["armed"]:
                state["armed"] = True
                threading.Timer(delay, kill).start()
        elif what == "done" and state["current"] == p:
            state["current"] = f"after {p}"
    if phase == "preflight":
        # The first line comes at once: arm from the start.
        state["armed"] = True
        threading.Timer(delay, kill).start()
    watch(proc, on_line)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    refreshed = "-"
    recovery = "none (completed before the kill)"
    if killed:
        out = tool.run(source, target, "init", "--resume", "--progress", "none")
        recovery = "init --resume"
        if out.returncode != 0 and "holds no interrupted run" in out.stderr:
            if replicating(target):
                # Killed after its last commit: the copy is complete and replicating.
                out, recovery = None, "none (the copy had completed and replicates)"
            else:
                out = tool.run(source, target, "init", "--progress", "none")
                recovery = "init (nothing to resume)"
        if out is None:
            dropped = False
        elif out.returncode != 0:
            return [n, f"{phase}+{delay:.2f}s", state["killed_in"] or "-", recovery,
                    "RECOVERY FAILED: " + out.stderr.strip().splitlines()[-1], "-", "-", "-", "-"]
        else:
            dropped = "dropped the replication slot" in out.stderr
            m = re.search(r"\((\d+) key ranges\) and (\d+) range\(s\) that had changed since "
                          r"were copied again \((\d+) rows\)", " ".join(out.stderr.split()))
            if m:
                refreshed = (f"{int(m.group(3)):,} rows ({m.group(2)} ranges or parts; "
                             f"{m.group(1)} ranges compared)")
    else:
        dropped = False
    if writer:
        # The writes go on for a moment after the recovery, then replication catches up.
        time.sleep(3)
        writer.stop()
        if not replicating(target):
            recovery += " NOT REPLICATING"
    v = tool.run(source, target, "verify", "--catch-up-timeout-secs", "60")
    verified = "equal" if v.returncode == 0 else "DIFFERENT"
    if writer:
        expected = table_hashes(source)
    rows = "exact" if table_hashes(target) == expected else "ROWS DIFFER"
    left = orphans(source, base)
    broken = app_writes_broken(source)
    row = [n, f"{phase}+{delay:.2f}s", state["killed_in"] or "-",
           recovery + (" (dropped the slot)" if dropped else ""), verified, rows,
           ", ".join(left) or "0", ", ".join(broken) or "all work", refreshed]
    tool.run(source, target, "sync", "--stop")
    psql(db(base, "postgres"), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return row


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--bin", required=True)
    a.add_argument("--pg-bindir", required=True)
    a.add_argument("--source", required=True)
    a.add_argument("--target-base", required=True)
    a.add_argument("--rounds", type=int, default=20)
    a.add_argument("--split", default="4MB")
    a.add_argument("--writes", action="store_true",
                   help="pgbench writes to the source throughout every round")
    a.add_argument("--phases", default="",
                   help="only the moments of these phases (comma-separated)")
    args = a.parse_args()
    moments = [m for m in MOMENTS if not args.phases or m[0] in args.phases.split(",")]
    writes = None
    if args.writes:
        script = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"seren-writes-{os.getpid()}.sql")
        with open(script, "w") as f:
            f.write(WRITES)
        writes = (args.pg_bindir, args.source, script)
    tool = Tool(args)
    began = time.monotonic()
    starts, durations, total = baseline(tool, args.source, args.target_base)
    print(f"baseline init: {total:.1f} s; phases: " + ", ".join(
        f"{p} {durations.get(p, 0):.2f} s" for p in PHASES))
    expected = table_hashes(args.source)
    print(f"{len(expected)} tables on the source")
    rows = []
    header = ["round", "moment", "phase at the kill", "recovery", "verify", "rows", "orphans",
              "app UPDATE/DELETE", "copied again on resume"]
    for n in range(1, args.rounds + 1):
        phase, fraction = moments[(n - 1) % len(moments)]
        delay = fraction * durations.get(phase, 0.1)
        t0 = time.monotonic()
        row = round_(tool, args.source, args.target_base, n, phase, delay, expected, writes)
        rows.append(row)
        print(f"round {n}: {' | '.join(str(c) for c in row[1:])} ({time.monotonic() - t0:.0f} s)",
              flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    exact = [r for r in rows if r[4] == "equal" and r[5] == "exact" and r[6] == "0"
             and r[7] == "all work"]
    print(f"\n{len(exact)}/{len(rows)} rounds exact, "
          f"{sum(1 for r in rows if r[6] not in ('0', '-'))} with orphans; "
          f"{time.monotonic() - began:.0f} s in all")
    sys.exit(0 if len(exact) == len(rows) else 1)


if __name__ == "__main__":
    main()

# shellcheck shell=bash
# Shared helpers for the scripts (sourced, not run).

# Install PostgreSQL (server, client tools, contrib extensions) when initdb or pg_dump is missing.
ensure_postgres() {
    if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v pg_dump >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL server binaries are missing: install them (Debian/Ubuntu: sudo apt-get install postgresql) or set PG_BINDIR" >&2
        exit 1
    fi
    echo "== installing PostgreSQL"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
}

# curl (the scripts talk to the API with it) and openssl (the TLS test makes its certificates).
ensure_tools() {
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# moto's AWS server in .venv-moto (the tests find it there): DynamoDB, EC2, KMS and IAM on
# loopback, so the AWS adapters are tested against real API semantics without an account.
ensure_moto() {
    if [ -x .venv-moto/bin/moto_server ]; then
        return 0
    fi
    echo "== installing moto[server] into .venv-moto"
    if ! python3 -m venv .venv-moto 2>/dev/null; then
        if [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv .venv-moto
        else
            echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
    .venv-moto/bin/pip install -q 'moto[server]>=5,<6'
}

# The folder holding pagila/ (SEREN_DATASETS, else the repository's datasets/); exits saying so when
# pagila is not there.
datasets_dir() {
    local d=${SEREN_DATASETS:-$PWD/datasets}
    if [ ! -f "$d/pagila/pagila-schema.sql" ]; then
        echo "pagila not found under $d: set SEREN_DATASETS to the folder holding pagila/" >&2
        exit 1
    fi
    echo "$d"
}

# The newest PostgreSQL bin directory.
pg_bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
    find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1
}

# The major version of the PostgreSQL installation in bin directory $1.
pg_major() {
    "$1/postgres" -V | awk '{split($3, v, "."); print v[1]}'
}

# Installations of other majors (the benchmarks): the system's (pg_bindir) where it serves,
# otherwise the tests' pinned downloads through pg-bindir (crates/pg-harness), which
# ensure_pg_bindir_tool builds. pg_server_bindir MAJOR: initdb, pg_ctl and postgres of MAJOR.
# pg_client_bindir SOURCE_MAJOR TARGET_MAJOR: client tools at least as new as both.
ensure_pg_bindir_tool() {
    cargo build -q -p pg-harness --bin pg-bindir
}
pg_server_bindir() {
    local system; system=$(pg_bindir)
    if [ "$1" = "$(pg_major "$system")" ]; then echo "$system"; else "$CARGO_TARGET_DIR/debug/pg-bindir" server "$1"; fi
}
pg_client_bindir() {
    local system newest=$(( $1 > $2 ? $1 : $2 )) dir
    system=$(pg_bindir)
    if [ "$newest" -le "$(pg_major "$system")" ]; then echo "$system"; return; fi
    dir=$("$CARGO_TARGET_DIR/debug/pg-bindir" client)
    [ "$(pg_major "$dir")" -ge "$newest" ] || { echo "no client tools of PostgreSQL $newest or newer" >&2; return 1; }
    echo "$dir"
}

# The median of the numbers on stdin, one per line (nothing for none).
median() {
    sort -n | awk '{a[NR]=$1} END {if (NR) print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}

# Run a server binary as postgres when we are root (PostgreSQL refuses to run as root).
as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_cluster DIR PORT [extra -c settings...]: a throwaway cluster with trust auth on loopback.
start_cluster() {
    local dir=$1 port=$2; shift 2
    local bin; bin=$(pg_bindir)
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
    as_server_user "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
    local opts="-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    for s in "$@"; do opts="$opts -c $s"; done
    as_server_user "$bin/pg_ctl" start -w -D "$dir/data" -l "$dir/server.log" -o "$opts" >/dev/null
}

stop_cluster() {
    local bin; bin=$(pg_bindir)
    as_server_user "$bin/pg_ctl" stop -m fast -D "$1/data" >/dev/null 2>&1 || true
}

# db_url URL DB: URL with its database replaced by DB.
db_url() {
    python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$1" "$2"
}

# compare_databases SOURCE_URL TARGET_URL: every ordinary table's row count and content hash
# (the hash of its rows' sorted hashes: a string of every row's text would pass 1 GB on a large
# table), source against target. Prints each difference; returns 1 when there is one.
compare_databases() {
    local s=$1 d=$2 t a b mismatch=0 tables=0 h
    local q="SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
    while read -r t; do
        h="SELECT count(*) || ':' || coalesce(md5(string_agg(h, '' ORDER BY h)), '') FROM (SELECT md5(x::text) AS h FROM ONLY $t x) r"
        a=$(psql -X -q -At -d "$s" -c "$h")
        b=$(psql -X -q -At -d "$d" -c "$h" 2>&1)
        tables=$((tables + 1))
        if [ "$a" != "$b" ]; then echo "DIFFERENT: $t source=$a target=$b"; mismatch=1; fi
    done < <(psql -X -q -At -d "$s" -c "$q")
    # shellcheck disable=SC2034 # read by the caller
    COMPARED_TABLES=$tables
    return "$mismatch"
}

# start_local_stack DIR: the control plane on this machine (seren-coordinator with a SQLite job
# store, a key-file sealer and seren-worker processes), on a free port, with a fresh API key.
# Sets STACK_URL, STACK_KEY and STACK_PID. Extra SEREN_* settings pass through the environment
# (the workers inherit them). Binaries come from $CARGO_TARGET_DIR/debug.
start_local_stack() {
    local dir=$1 port
    mkdir -p "$dir"
    port=$(free_port)
    STACK_KEY="sk-local-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    STACK_URL="http://127.0.0.1:$port"
    local bin="$CARGO_TARGET_DIR/debug"
    (cd "$dir" && SEREN_API_KEY_SHA256=$(echo "$STACK_KEY" | "$bin/seren-coordinator" hash-key) \
        SEREN_LISTEN="127.0.0.1:$port" SEREN_WORKER_PROGRAM="$bin/seren-worker" \
        SEREN_WORKER_LOG_DIR="$dir/workers" SEREN_PG_BINDIR="$(pg_bindir)" \
        exec "$bin/seren-coordinator" >>"$dir/coordinator.log" 2>&1) &
    # shellcheck disable=SC2034 # read by the caller
    STACK_PID=$!
    local _
    for _ in $(seq 1 100); do
        curl -sf "$STACK_URL/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the coordinator did not start; its log:" >&2
    cat "$dir/coordinator.log" >&2
    return 1
}

# build_debug_binaries: the debug binaries (CLI, coordinator, worker) in $CARGO_TARGET_DIR/debug,
# built exactly as `cargo test --workspace --all-features` builds them. A plain `cargo build -p …`
# resolves other features (the tests' dev-dependencies add tokio's test-util, for one), which
# rebuilds tokio and everything above it: four minutes on 2 cores after the test run.
build_debug_binaries() {
    cargo test -q --workspace --all-features --no-run 2>&1 | { grep -v '^ *Executable ' || true; } >&2
}

# Where the Python tools' venvs live: outside the checkout, so that every clone shares them
# (cargo-lambda's zig must keep one path, or the Lambda build starts from scratch each time).
tools_dir() {
    echo "${SEREN_TOOLS_DIR:-$HOME/.cache/seren-tools}"
}

# A Python tool in its own venv, $(tools_dir)/NAME (checkov and python-hcl2 both ship a module
# named hcl2, so each gets its own). Installs it when missing; exits saying why when it cannot.
ensure_venv() {
    local name="$1" dir
    shift
    dir="$(tools_dir)/$name"
    if [ -x "$dir/bin/python" ] && [ -f "$dir/.installed" ]; then
        return 0
    fi
    echo "== installing $* into $dir"
    mkdir -p "$(tools_dir)"
    python3 -m venv "$dir" || {
        echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
        exit 1
    }
    "$dir/bin/pip" install -q "$@"
    touch "$dir/.installed"
}

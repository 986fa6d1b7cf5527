# deploy/local/stack.d/postgres.sh: the `postgres` component of
# deploy/local/stack, a PostgreSQL cluster of the distribution's server package
# (installed with apt-get when absent), with the services' role and database.
# Defines pg_up, pg_down, pg_status, pg_purge, and pg_dsn for `env`.
# Sourced by deploy/local/stack after common.sh; not run on its own.
# shellcheck shell=bash

PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-hookstream}
PG_PASSWORD=${PG_PASSWORD:-hookstream}
PG_DB=${PG_DB:-hookstream}
PG_BINDIR=${PG_BINDIR:-}
PG_ADMIN_DSN=${PG_ADMIN_DSN:-}
PG_START_TIMEOUT=60

PG_DIR="$STACK_DIR/pg"
PGDATA_DIR="$PG_DIR/data"
PG_PID_FILE="$PG_DIR/postgres.pid"      # written by `up`: "we started it"
PG_LOG="$PG_DIR/postgres.log"
PG_OS_USER=postgres                     # initdb refuses to run as root

# Run a command as the PostgreSQL OS user: `postgres` when we are root (initdb
# and postgres refuse root), ourselves otherwise. fd 9 (our lock) is closed so
# a server started this way does not hold the lock after we exit.
as_pg() {
    if (( EUID == 0 )); then
        (cd / && runuser -u "$PG_OS_USER" -- "$@" 9>&-)
    else
        (cd / && "$@" 9>&-)
    fi
}

# Directory with initdb/pg_ctl: PG_BINDIR, else the version that made PGDATA,
# else the newest Debian /usr/lib/postgresql/N/bin, else pg_config/PATH.
find_pg_server_bindir() {
    local d
    if [[ -n $PG_BINDIR ]]; then
        [[ -x $PG_BINDIR/initdb && -x $PG_BINDIR/pg_ctl ]] && { printf '%s' "$PG_BINDIR"; return 0; }
        die "PG_BINDIR=$PG_BINDIR has no initdb/pg_ctl"
    fi
    if [[ -f $PGDATA_DIR/PG_VERSION ]]; then
        d="/usr/lib/postgresql/$(<"$PGDATA_DIR/PG_VERSION")/bin"
        [[ -x $d/initdb ]] && { printf '%s' "$d"; return 0; }
    fi
    d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
    [[ -n $d ]] && { printf '%s' "${d%/initdb}"; return 0; }
    if command -v pg_config >/dev/null; then
        d=$(pg_config --bindir 2>/dev/null || true)
        [[ -n $d && -x $d/initdb ]] && { printf '%s' "$d"; return 0; }
    fi
    d=$(command -v initdb 2>/dev/null || true)
    [[ -n $d ]] && { printf '%s' "${d%/initdb}"; return 0; }
    return 1
}

pg_server_bindir() {
    local d
    if d=$(find_pg_server_bindir); then printf '%s' "$d"; return 0; fi
    apt_install postgresql
    d=$(find_pg_server_bindir) || die "postgres: installed postgresql but found no initdb"
    printf '%s' "$d"
}

# psql/pg_isready: next to the server binaries, else on PATH, else install.
pg_client() {
    local tool=$1 d
    if d=$(find_pg_server_bindir 2>/dev/null) && [[ -x $d/$tool ]]; then printf '%s' "$d/$tool"; return 0; fi
    if d=$(command -v "$tool"); then printf '%s' "$d"; return 0; fi
    apt_install postgresql-client
    command -v "$tool" || die "postgres: no $tool after installing postgresql-client"
}

pg_answers() {
    "$(pg_client pg_isready)" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 9>&- >/dev/null 2>&1
}

# Unix socket dir of our cluster, short enough for sun_path (107 bytes).
pg_socket_dir() {
    local d="$PG_DIR/run"
    if (( ${#d} + 20 > 107 )); then
        d="/tmp/hookstream-pg-$(printf '%s' "$PG_DIR" | sha256sum | cut -c1-12)"
    fi
    printf '%s' "$d"
}

pg_url_encode() {
    local s=$1 out="" c i
    for (( i = 0; i < ${#s}; i++ )); do
        c=${s:i:1}
        case $c in
            [A-Za-z0-9._~-]) out+=$c ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

pg_dsn() {
    printf 'postgresql://%s:%s@127.0.0.1:%s/%s' "$(pg_url_encode "$PG_USER")" \
        "$(pg_url_encode "$PG_PASSWORD")" "$PG_PORT" "$(pg_url_encode "$PG_DB")"
}

pg_app_ok() {
    PGCONNECT_TIMEOUT=5 "$(pg_client psql)" -w -X -q -At "$(pg_dsn)" -c 'select 1' 9>&- >/dev/null 2>&1
}

# Postmaster pid recorded by `up`, if it is still the postmaster of our PGDATA.
pg_our_pid() {
    [[ -f $PG_PID_FILE && -f $PGDATA_DIR/postmaster.pid ]] || return 1
    local pid
    pid=$(<"$PG_PID_FILE")
    [[ $pid == "$(head -n 1 "$PGDATA_DIR/postmaster.pid")" ]] || return 1
    pid_alive "$pid" || return 1
    [[ $(proc_cmdline "$pid") == *"$PGDATA_DIR"* ]] || return 1
    printf '%s' "$pid"
}

# Run SQL script $1 as a superuser (remaining args go to psql).
# Our own server: the postgres OS user over our socket (trust).
# Someone else's: PG_ADMIN_DSN, else the postgres OS user via the default unix
# socket (peer auth, Debian's default), else via 127.0.0.1 (if trusted).
pg_admin_psql() {
    local sql=$1 psql how
    shift
    psql=$(pg_client psql)
    local -a common=(-w -X -q -At -v ON_ERROR_STOP=1 "$@")
    local -a tries=()
    if pg_our_pid >/dev/null; then
        tries+=(own)
    else
        if [[ -n $PG_ADMIN_DSN ]]; then tries+=(dsn); fi
        tries+=(peer tcp)
    fi
    for how in "${tries[@]}"; do
        case $how in
            own)  as_pg env PGCONNECT_TIMEOUT=5 "$psql" "${common[@]}" -h "$(pg_socket_dir)" -p "$PG_PORT" -U postgres -d postgres <<<"$sql" && return 0 ;;
            dsn)  PGCONNECT_TIMEOUT=5 "$psql" "${common[@]}" -d "$PG_ADMIN_DSN" <<<"$sql" 9>&- && return 0 ;;
            peer) as_pg env -u PGHOST -u PGHOSTADDR PGCONNECT_TIMEOUT=5 "$psql" "${common[@]}" -p "$PG_PORT" -U postgres -d postgres <<<"$sql" 2>/dev/null && return 0 ;;
            tcp)  as_pg env PGCONNECT_TIMEOUT=5 "$psql" "${common[@]}" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres <<<"$sql" 2>/dev/null && return 0 ;;
        esac
    done
    return 1
}

# Role PG_USER (LOGIN CREATEDB, password PG_PASSWORD) and database PG_DB owned
# by it; idempotent. Skipped entirely if the app DSN already works.
pg_ensure_role_db() {
    if pg_app_ok; then
        return 0
    fi
    say "postgres: creating role '$PG_USER' and database '$PG_DB' (if missing)"
    # psql :'var' quoting + format(%I/%L) + \gexec: safe for any names.
    local sql
    sql=$(cat <<'SQL'
SELECT CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = :'u')
            THEN format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'u', :'p')
            ELSE format('CREATE ROLE %I WITH LOGIN CREATEDB PASSWORD %L', :'u', :'p')
       END \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'d') \gexec
SQL
)
    if ! pg_admin_psql "$sql" -v u="$PG_USER" -v p="$PG_PASSWORD" -v d="$PG_DB"; then
        die "postgres: cannot get superuser access to 127.0.0.1:$PG_PORT to create '$PG_USER'/'$PG_DB' (set PG_ADMIN_DSN, or create them yourself)"
    fi
    pg_app_ok || die "postgres: created '$PG_USER'/'$PG_DB' but '$(pg_dsn)' still cannot connect (check pg_hba.conf of the server on port $PG_PORT)"
}

pg_init_cluster() {
    local bindir=$1 sock
    sock=$(pg_socket_dir)
    mkdir -p "$PG_DIR"
    if (( EUID == 0 )); then
        chown "$PG_OS_USER:" "$PG_DIR"
        runuser -u "$PG_OS_USER" -- test -x "$PG_DIR" -a -w "$PG_DIR" ||
            die "postgres: OS user '$PG_OS_USER' cannot reach $PG_DIR (a parent dir lacks o+x); set HOOKSTREAM_STACK_DIR elsewhere"
    fi
    if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
        say "postgres: initdb $PGDATA_DIR ($("$bindir/initdb" --version 9>&- | sed 's/.*) //'))"
        rm -rf "$PGDATA_DIR"
        as_pg "$bindir/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 ||
            { cat "$PG_DIR/initdb.log" >&2; die "postgres: initdb failed"; }
        printf "\n# Added by deploy/local/stack\ninclude_if_exists = 'stack.conf'\n" |
            as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null
        # Superuser only through the unix socket in the state dir (trust);
        # every TCP login (the app's DSN) needs its password.
        as_pg tee "$PGDATA_DIR/pg_hba.conf" >/dev/null <<'EOF'
# Written by deploy/local/stack.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   ::1/128        scram-sha-256
EOF
    fi
    # Port and socket may change between runs: rewrite on every start.
    as_pg tee "$PGDATA_DIR/stack.conf" >/dev/null <<EOF
# Written by deploy/local/stack on every start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
max_connections = 200
logging_collector = off
EOF
    mkdir -p "$sock"
    if (( EUID == 0 )); then chown "$PG_OS_USER:" "$sock"; fi
    chmod 0750 "$sock"
}

pg_up() {
    local t0 pid
    t0=$(now_us)

    # Fresh machine (no server, no client) and nothing on the port: install
    # the server package now rather than the client first and the server later.
    if ! find_pg_server_bindir >/dev/null 2>&1 && ! command -v pg_isready >/dev/null &&
            ! port_open "$PG_PORT"; then
        pg_server_bindir >/dev/null
    fi

    if pid=$(pg_our_pid); then
        pg_answers || die "postgres: our server (pid $pid) runs but does not answer on 127.0.0.1:$PG_PORT"
        pg_ensure_role_db
        say "postgres: already running on 127.0.0.1:$PG_PORT (pid $pid, started by stack)"
        return 0
    fi
    rm -f "$PG_PID_FILE"

    if pg_answers; then
        may_reuse postgres "127.0.0.1:$PG_PORT"
        pg_ensure_role_db
        say "postgres: reusing the server already on 127.0.0.1:$PG_PORT (not started by stack; down leaves it alone)"
        return 0
    fi
    port_open "$PG_PORT" && die "postgres: 127.0.0.1:$PG_PORT is taken by something that is not PostgreSQL; set PG_PORT"

    local bindir
    bindir=$(pg_server_bindir)
    # Installing the package may have started the distribution's own cluster.
    if pg_answers; then
        may_reuse postgres "127.0.0.1:$PG_PORT"
        pg_ensure_role_db
        say "postgres: reusing the server on 127.0.0.1:$PG_PORT started by the package install (not started by stack)"
        return 0
    fi
    pg_init_cluster "$bindir"
    say "postgres: starting on 127.0.0.1:$PG_PORT (data $PGDATA_DIR)"
    if ! as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" start >/dev/null 2>&1 </dev/null; then
        tail -n 30 "$PG_LOG" >&2 || true
        die "postgres: pg_ctl start failed (log: $PG_LOG)"
    fi
    head -n 1 "$PGDATA_DIR/postmaster.pid" >"$PG_PID_FILE"
    pid=$(<"$PG_PID_FILE")
    pg_answers || die "postgres: started (pid $pid) but pg_isready fails on 127.0.0.1:$PG_PORT"
    pg_ensure_role_db
    say "postgres ready on 127.0.0.1:$PG_PORT in $(elapsed "$t0")s (pid $pid, log $PG_LOG)"
}

pg_down() {
    local pid
    if ! pid=$(pg_our_pid); then
        rm -f "$PG_PID_FILE"
        if pg_answers; then
            say "postgres: the server on 127.0.0.1:$PG_PORT was not started by stack from $STACK_DIR; leaving it alone"
        else
            say "postgres: not running (nothing started by stack)"
        fi
        return 0
    fi
    local t0 bindir
    t0=$(now_us)
    bindir=$(find_pg_server_bindir) || die "postgres: no pg_ctl found to stop pid $pid"
    say "postgres: stopping pid $pid (pg_ctl stop -m fast)"
    as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null ||
        die "postgres: pg_ctl stop failed (log: $PG_LOG)"
    rm -f "$PG_PID_FILE"
    say "postgres: stopped ($(elapsed "$t0")s)"
}

pg_status() {
    local where="127.0.0.1:$PG_PORT" pid
    if pid=$(pg_our_pid); then
        if pg_answers; then
            printf '%-12s %-5s %-16s %s\n' postgres up "$where" "started by stack (pid $pid, $PGDATA_DIR)"
            return 0
        fi
        printf '%-12s %-5s %-16s %s\n' postgres down "$where" "started by stack (pid $pid) but not answering"
        return 1
    fi
    if pg_answers; then
        printf '%-12s %-5s %-16s %s\n' postgres up "$where" "not started by stack (reused; down leaves it alone)"
        return 0
    fi
    printf '%-12s %-5s %-16s %s\n' postgres down "$where" "-"
    return 1
}

pg_purge() {
    say "postgres: deleting $PG_DIR"
    rm -rf "$PG_DIR"
    local sock
    sock=$(pg_socket_dir)
    if [[ $sock == /tmp/hookstream-pg-* ]]; then rm -rf "$sock"; fi
}

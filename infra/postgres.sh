#!/usr/bin/env bash
# PostgreSQL (Debian's package) for the query store that several `cami serve` nodes and `cami workers` share
# (CAMI_QUERY_STORE=postgresql://...): a cluster of its own in DIR, on 127.0.0.1 only, with a database and a
# user that logs in with a password (scram-sha-256). For the tests and a rehearsal on one machine; a real
# server is Debian's own cluster (docs/pilot.md, section 13).
#
#   infra/postgres.sh install    # apt-get install -y postgresql (skipped when a PostgreSQL server is installed)
#   infra/postgres.sh start  --dir DIR --port PORT [--user NAME] [--database NAME]
#                                    # prints 127.0.0.1:PORT once the server takes connections
#   infra/postgres.sh stop   --dir DIR   # fast shutdown (sessions are ended), up to 30 s, then SIGKILL
#   infra/postgres.sh kill   --dir DIR   # SIGKILL now (a crash)
#   infra/postgres.sh status --dir DIR   # exit 0 when running, prints the address
#
# DIR holds one server: data/ (the cluster, owned by the server's user, 0700), socket/ (its Unix socket,
#   0700: only that user connects there, to create the database and the user), postgres.out (the server's
#   log), postgres.pid, address, password (0600: the user's password).
# The first start runs initdb (UTF-8, locale C.UTF-8; TCP connections need a password, scram-sha-256, and
#   come from 127.0.0.1 or ::1 only; the Unix socket uses peer authentication, never trust), then creates the
#   user (--user, default cami) and the database it owns (--database, default cami). Later starts reuse
#   them. The password is CAMI_POSTGRES_PASSWORD when set at the first start, else random; it stays in
#   DIR/password.
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user (which the
#   package creates), so DIR and every directory above it must let that user in (a directory under /tmp
#   does; pytest's own temporary directories, 0700, do not). As any other user it runs as that user.
# Environment: CAMI_POSTGRES_BIN (the server's bin directory, default the newest /usr/lib/postgresql/*/bin),
#   CAMI_POSTGRES_START_TIMEOUT (default 60 s), CAMI_POSTGRES_PASSWORD (see above).
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(postgresql)
START_TIMEOUT="${CAMI_POSTGRES_START_TIMEOUT:-60}"
STOP_TIMEOUT=30
SERVER_USER=postgres

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

# ---- install -----------------------------------------------------------------------------------

# the bin directory of the newest installed server (or CAMI_POSTGRES_BIN)
server_bin() {
    if [[ -n "${CAMI_POSTGRES_BIN:-}" ]]; then
        printf '%s\n' "$CAMI_POSTGRES_BIN"
        return 0
    fi
    local found
    found="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$found" ]] || return 1
    dirname "$found"
}

is_installed() {
    local bin
    bin="$(server_bin)" || return 1
    [[ -x "$bin/postgres" && -x "$bin/initdb" && -x "$bin/pg_isready" && -x "$bin/psql" ]]
}

do_install() {
    if is_installed; then
        debug "PostgreSQL already installed ($(server_bin))"
        return 0
    fi
    debian_install "$CAMI_CACHE/postgres-apt.log" "${PACKAGES[@]}"
    is_installed || die "apt-get finished but no PostgreSQL server is in /usr/lib/postgresql/*/bin"
}

cmd_install() {
    (($# == 0)) || die "install takes no options"
    with_lock "$CAMI_CACHE/.postgres-install.lock" do_install
}

# ---- options shared by start/stop/kill/status ----------------------------------------------------

DIR=""
PORT=""
DB_USER=cami
DB_NAME=cami

parse_opts() {
    while (($#)); do
        case "$1" in
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --user) DB_USER="${2:?--user needs a value}"; shift 2 ;;
        --database) DB_NAME="${2:?--database needs a value}"; shift 2 ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see: $0 --help)" ;;
        esac
    done
    [[ -n "$DIR" ]] || die "--dir is required"
    DIR="$(abs_dir "$DIR")"
    DATA="$DIR/data"
    SOCKET_DIR="$DIR/socket"
    PID_FILE="$DIR/postgres.pid"
    # the server's command line names its data directory: that identifies our process
    PID_MARKER="$DATA"
}

# "$@" as the user the server runs as (the postgres system user when we are root)
as_server() {
    if [[ "$(id -u)" == 0 ]]; then
        setpriv --reuid="$SERVER_USER" --regid="$SERVER_USER" --init-groups --reset-env -- "$@"
    else
        "$@"
    fi
}

server_user() { if [[ "$(id -u)" == 0 ]]; then printf '%s\n' "$SERVER_USER"; else id -un; fi; }

# ---- start ---------------------------------------------------------------------------------------

check_start_opts() {
    [[ -n "$PORT" ]] || die "--port is required"
    is_port_number "$PORT" || die "--port must be a TCP port, got '$PORT'"
    [[ "$DB_USER" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "--user must be a lower-case SQL name, got '$DB_USER'"
    [[ "$DB_NAME" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "--database must be a lower-case SQL name, got '$DB_NAME'"
}

# DIR/data and DIR/socket owned by the server's user, 0700; DIR itself must let that user in
prepare_dirs() {
    local owner
    owner="$(server_user)"
    if [[ "$(id -u)" == 0 ]]; then
        id "$SERVER_USER" >/dev/null 2>&1 || die "no '$SERVER_USER' system user (the postgresql package creates it)"
        chmod 0755 "$DIR"
        as_server test -x "$DIR" ||
            die "the '$SERVER_USER' user cannot enter $DIR (a directory above it is closed to other users);" \
                "choose a --dir it can reach, e.g. one under /tmp or /var/lib"
        install -d -m 0700 -o "$owner" -g "$(id -gn "$owner")" "$DATA" "$SOCKET_DIR"
        # a directory given back by an earlier start keeps its owner; a copied one may not
        chown -R "$owner:$(id -gn "$owner")" "$DATA" "$SOCKET_DIR"
    else
        install -d -m 0700 "$DATA" "$SOCKET_DIR"
    fi
}

password() {
    if [[ ! -s "$DIR/password" ]]; then
        local value="${CAMI_POSTGRES_PASSWORD:-}"
        [[ -n "$value" ]] || value="$(od -An -tx1 -N18 /dev/urandom | tr -d ' \n')"
        [[ "$value" != *[\'\\]* ]] || die "CAMI_POSTGRES_PASSWORD must not contain a quote (') or a backslash"
        (umask 077 && printf '%s\n' "$value" >"$DIR/password.tmp")
        mv -f "$DIR/password.tmp" "$DIR/password"
    fi
    head -n 1 "$DIR/password"
}

init_cluster() {
    [[ -s "$DATA/PG_VERSION" ]] && return 0
    local bin="$1"
    log "initdb $DATA (user '$(server_user)')"
    as_server "$bin/initdb" -D "$DATA" -U "$(server_user)" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >>"$DIR/postgres.out" 2>&1 ||
        { show_log_tail 30 "$DIR/postgres.out"; die "initdb failed (log: $DIR/postgres.out)"; }
    # TCP from loopback only, with a password; the socket for the server's own user (peer)
    cat >"$DIR/pg_hba.conf.tmp" <<'EOF'
# Written by infra/postgres.sh: the socket for the server's own user, TCP from loopback with a password.
local   all   all                  peer
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
EOF
    as_server tee "$DATA/pg_hba.conf" <"$DIR/pg_hba.conf.tmp" >/dev/null
    rm -f "$DIR/pg_hba.conf.tmp"
}

# the user (with its password) and the database it owns, when they do not exist yet
create_user_and_database() {
    local bin="$1" secret
    secret="$(password)"
    as_server "$bin/psql" -X -q -h "$SOCKET_DIR" -p "$PORT" -U "$(server_user)" -d postgres -v ON_ERROR_STOP=1 \
        >>"$DIR/postgres.out" 2>&1 <<EOF || { show_log_tail 30 "$DIR/postgres.out"; die "creating the user and the database failed"; }
\\set db_user '$DB_USER'
\\set db_name '$DB_NAME'
\\set db_password '$secret'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'db_user', :'db_password')
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'db_user') \\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db_name', :'db_user')
    WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db_name') \\gexec
EOF
}

fail_start() { abort_start "${1:-}" "$2" "$DIR/postgres.out"; }

cmd_start() {
    parse_opts "$@"
    check_start_opts
    is_installed || die "PostgreSQL is not installed; run: bash $INFRA_DIR/postgres.sh install"
    require_cmd setsid setpriv od
    local bin pid
    bin="$(server_bin)"
    if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
        debug "already running (pid $pid)"
        cat "$DIR/address"
        return 0
    fi
    ! port_open 127.0.0.1 "$PORT" || die "port $PORT is already in use by another process"
    prepare_dirs
    init_cluster "$bin"
    printf '\n===== start %s =====\n' "$(date -Is)" >>"$DIR/postgres.out"
    # as root: setpriv switches to the server's user and execs, so the recorded pid is the server's
    local run=("$bin/postgres")
    [[ "$(id -u)" != 0 ]] || run=(setpriv --reuid="$SERVER_USER" --regid="$SERVER_USER" --init-groups
        --reset-env -- "$bin/postgres")
    spawn_detached "$PID_FILE" "$DIR/postgres.out" "${run[@]}" -D "$DATA" -p "$PORT" \
        -c listen_addresses=127.0.0.1 -c unix_socket_directories="$SOCKET_DIR" -c max_connections=200 \
        -c logging_collector=off
    pid="$(cat "$PID_FILE")"
    local deadline=$((SECONDS + START_TIMEOUT))
    until as_server "$bin/pg_isready" -q -h "$SOCKET_DIR" -p "$PORT"; do
        pid_alive "$pid" || fail_start "" "postgres exited during start-up (pid $pid)"
        ((SECONDS < deadline)) || fail_start "$pid" "postgres not ready on port $PORT after ${START_TIMEOUT}s"
        sleep 0.1
    done
    create_user_and_database "$bin"
    wait_for_port 127.0.0.1 "$PORT" 10 || fail_start "$pid" "postgres does not listen on 127.0.0.1:$PORT"
    printf '127.0.0.1:%s\n' "$PORT" >"$DIR/address"
    cat "$DIR/address"
}

# SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every session to end)
cmd_stop() {
    parse_opts "$@"
    stop_pid_file "$PID_FILE" "$PID_MARKER" "$STOP_TIMEOUT" INT
}

cmd_kill() {
    parse_opts "$@"
    kill_pid_file "$PID_FILE" "$PID_MARKER"
}

cmd_status() {
    parse_opts "$@"
    server_status "$PID_FILE" "$PID_MARKER" "$DIR/address"
}

dispatch "install start stop kill status" "$@"

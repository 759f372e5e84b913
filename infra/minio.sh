#!/usr/bin/env bash
# MinIO (S3 API, one drive or an erasure set) on loopback for tests and benchmarks.
#
#   infra/minio.sh install
#   infra/minio.sh start  [--dir DIR] [--port N] [--console-port N] [--drives N]
#                                          # prints http://127.0.0.1:PORT
#   infra/minio.sh stop   [--dir DIR]      # SIGTERM, up to 30 s, then SIGKILL
#   infra/minio.sh kill   [--dir DIR]      # SIGKILL now (crash simulation)
#   infra/minio.sh status [--dir DIR]      # exit 0 when running, prints the endpoint
#   infra/minio.sh fail-drive    [--dir DIR] --drive I   # take drive I away (DIR/dataI -> DIR/dataI.away)
#   infra/minio.sh restore-drive [--dir DIR] --drive I   # put it back; MinIO heals what it missed
#
# install: `go install github.com/minio/minio@$CAMI_MINIO_VERSION` (default latest) with
#   GOBIN=$CAMI_CACHE/bin; skipped when that binary exists. GOFLAGS, GOMODCACHE, GOCACHE and GOPROXY
#   are left to the caller's Go environment.
# DIR holds everything of one server: data/ (the drive), minio.out (server log), minio.pid, endpoint.
#   Starting again on an existing DIR reuses its data.
# --drives N (1-16; default 1): one server over DIR/data1..dataN, which MinIO runs as one erasure set
#   (4 drives: 2 data + 2 parity shards per object; reads need 2 drives, writes 3, so one drive may be
#   lost without refusing anything). DIR/drives records N; later starts on DIR need no --drives.
#   MINIO_CI_CD=1 is set for such a server: it lets the drives share the root file system (as on a test
#   machine) and keeps MinIO's buffer pool at 256 MiB.
# fail-drive moves the drive's directory away while the server runs (or not): MinIO sees the drive as
#   missing (admin info: "unformatted") within a request or two. restore-drive moves it back; MinIO
#   reconnects it within 15 s and heals the objects written meanwhile onto it.
# Credentials: CAMI_S3_ACCESS_KEY / CAMI_S3_SECRET_KEY (defaults cami-test / cami-test-secret).
# Environment: CAMI_CACHE (default ~/.cache/cami), CAMI_MINIO_START_TIMEOUT (default 60 s),
#   CAMI_VERBOSE=1 for more logging.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MINIO_MODULE="github.com/minio/minio"
# pinned to what @latest resolved to when this was written, so every machine builds the same server
MINIO_VERSION="${CAMI_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
MINIO_BIN_DIR="$CAMI_CACHE/bin"
MINIO_BIN="$MINIO_BIN_DIR/minio"
MINIO_START_TIMEOUT="${CAMI_MINIO_START_TIMEOUT:-60}"
MINIO_STOP_TIMEOUT=30
ACCESS_KEY="${CAMI_S3_ACCESS_KEY:-cami-test}"
SECRET_KEY="${CAMI_S3_SECRET_KEY:-cami-test-secret}"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

is_installed() { [[ -x "$MINIO_BIN" ]]; }

do_install() {
    if is_installed; then
        debug "MinIO already installed at $MINIO_BIN"
        return 0
    fi
    require_cmd go
    log "building $MINIO_MODULE@$MINIO_VERSION into $MINIO_BIN_DIR (go install; minutes when the Go cache is cold)"
    mkdir -p "$MINIO_BIN_DIR"
    local go_log="$CAMI_CACHE/minio-go-install.log"
    # Build outside any Go module (this repo is not one); GOBIN decides where the binary lands.
    if ! (cd "$CAMI_CACHE" && GOBIN="$MINIO_BIN_DIR" go install "$MINIO_MODULE@$MINIO_VERSION") \
        >"$go_log" 2>&1; then
        show_log_tail 40 "$go_log"
        die "go install $MINIO_MODULE@$MINIO_VERSION failed (full output: $go_log)"
    fi
    is_installed || die "go install succeeded but $MINIO_BIN is missing (GOBIN overridden by GOFLAGS?)"
}

cmd_install() {
    mkdir -p "$CAMI_CACHE"
    with_lock "$CAMI_CACHE/.minio-install.lock" do_install
}

# ---- options shared by start/stop/kill/status ------------------------------------------------

DIR="$CAMI_CACHE/run/minio"
PORT=9000
CONSOLE_PORT=""
DRIVES=""
DRIVE=""

parse_opts() {
    while (($#)); do
        case "$1" in
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) DIR="${1#*=}"; shift ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --console-port) CONSOLE_PORT="${2:?--console-port needs a value}"; shift 2 ;;
        --console-port=*) CONSOLE_PORT="${1#*=}"; shift ;;
        --drives) DRIVES="${2:?--drives needs a value}"; shift 2 ;;
        --drives=*) DRIVES="${1#*=}"; shift ;;
        --drive) DRIVE="${2:?--drive needs a value}"; shift 2 ;;
        --drive=*) DRIVE="${1#*=}"; shift ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see: $0 --help)" ;;
        esac
    done
    CONSOLE_PORT="${CONSOLE_PORT:-$((PORT + 1))}"
    is_port_number "$PORT" || die "--port must be a TCP port, got '$PORT'"
    is_port_number "$CONSOLE_PORT" || die "--console-port must be a TCP port, got '$CONSOLE_PORT'"
    [[ "$PORT" != "$CONSOLE_PORT" ]] || die "--port and --console-port must differ"
    DIR="$(abs_dir "$DIR")"
    PID_FILE="$DIR/minio.pid"
    # The server's command line contains its drive path (or DIR/data{1...N}): that identifies our process.
    PID_MARKER="$DIR/data"
    local stored=""
    [[ ! -f "$DIR/drives" ]] || stored="$(tr -dc '0-9' <"$DIR/drives")"
    if [[ -n "$DRIVES" ]]; then
        if ! [[ "$DRIVES" =~ ^[0-9]+$ ]] || ((DRIVES < 1 || DRIVES > 16)); then
            die "--drives must be 1-16, got '$DRIVES'"
        fi
        [[ -z "$stored" || "$stored" == "$DRIVES" ]] ||
            die "$DIR holds $stored drives, not $DRIVES (use another --dir)"
        if ((DRIVES > 1)) && [[ -z "$stored" && -d "$DIR/data" ]]; then
            die "$DIR holds a single-drive server (use another --dir)"
        fi
    fi
    DRIVES="${stored:-${DRIVES:-1}}"
}

# The server's drive arguments: DIR/data, or MinIO's ellipsis DIR/data{1...N} for an erasure set.
drive_args() {
    if ((DRIVES == 1)); then
        printf '%s\n' "$DIR/data"
    else
        printf '%s\n' "$DIR/data{1...$DRIVES}"
    fi
}

http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
    fi
}

fail_start() { abort_start "${1:-}" "$2" "$DIR/minio.out"; }

cmd_start() {
    parse_opts "$@"
    is_installed || die "MinIO is not installed; run: bash $INFRA_DIR/minio.sh install"
    require_cmd setsid
    ((${#ACCESS_KEY} >= 3)) || die "CAMI_S3_ACCESS_KEY must have at least 3 characters"
    ((${#SECRET_KEY} >= 8)) || die "CAMI_S3_SECRET_KEY must have at least 8 characters"
    local pid
    if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
        debug "already running (pid $pid)"
        cat "$DIR/endpoint"
        return 0
    fi
    if port_open 127.0.0.1 "$PORT"; then
        die "port $PORT is already in use by another process"
    fi
    if port_open 127.0.0.1 "$CONSOLE_PORT"; then
        die "console port $CONSOLE_PORT is already in use by another process"
    fi
    local i
    if ((DRIVES == 1)); then
        mkdir -p "$DIR/data"
    else
        for ((i = 1; i <= DRIVES; i++)); do
            [[ -d "$DIR/data$i.away" ]] || mkdir -p "$DIR/data$i"
        done
        printf '%s\n' "$DRIVES" >"$DIR/drives"
        export MINIO_CI_CD=1
    fi
    printf '\n===== start %s =====\n' "$(date -Is)" >>"$DIR/minio.out"
    MINIO_ROOT_USER="$ACCESS_KEY" MINIO_ROOT_PASSWORD="$SECRET_KEY" MINIO_UPDATE=off \
        spawn_detached "$PID_FILE" "$DIR/minio.out" "$MINIO_BIN" server \
        --address "127.0.0.1:$PORT" --console-address "127.0.0.1:$CONSOLE_PORT" "$(drive_args)"
    pid="$(cat "$PID_FILE")"
    local endpoint="http://127.0.0.1:$PORT"
    local deadline=$((SECONDS + MINIO_START_TIMEOUT))
    until http_ok "$endpoint/minio/health/live" && http_ok "$endpoint/minio/health/ready"; do
        pid_alive "$pid" || fail_start "" "MinIO exited during start-up (pid $pid)"
        ((SECONDS < deadline)) || fail_start "$pid" "MinIO not healthy on $endpoint after ${MINIO_START_TIMEOUT}s"
        sleep 0.2
    done
    printf '%s\n' "$endpoint" >"$DIR/endpoint"
    cat "$DIR/endpoint"
}

cmd_stop() {
    parse_opts "$@"
    stop_pid_file "$PID_FILE" "$PID_MARKER" "$MINIO_STOP_TIMEOUT"
}

cmd_kill() {
    parse_opts "$@"
    kill_pid_file "$PID_FILE" "$PID_MARKER"
}

cmd_status() {
    parse_opts "$@"
    server_status "$PID_FILE" "$PID_MARKER" "$DIR/endpoint"
}

# --drive I of an erasure set: sets DRIVE_DIR and AWAY_DIR
pick_drive() {
    ((DRIVES > 1)) || die "$DIR is not an erasure set (start it with --drives N)"
    if ! [[ "$DRIVE" =~ ^[0-9]+$ ]] || ((DRIVE < 1 || DRIVE > DRIVES)); then
        die "--drive must be 1-$DRIVES, got '$DRIVE'"
    fi
    DRIVE_DIR="$DIR/data$DRIVE"
    AWAY_DIR="$DIR/data$DRIVE.away"
}

cmd_fail-drive() {
    parse_opts "$@"
    pick_drive
    [[ ! -d "$AWAY_DIR" ]] || die "drive $DRIVE is already away ($AWAY_DIR)"
    [[ -d "$DRIVE_DIR" ]] || die "no drive $DRIVE_DIR"
    mv -T "$DRIVE_DIR" "$AWAY_DIR"
}

cmd_restore-drive() {
    parse_opts "$@"
    pick_drive
    [[ -d "$AWAY_DIR" ]] || die "drive $DRIVE is not away (no $AWAY_DIR)"
    # MinIO may have recreated an empty directory at the drive's path meanwhile
    if [[ -d "$DRIVE_DIR" ]]; then
        rmdir "$DRIVE_DIR" 2>/dev/null || die "$DRIVE_DIR is back but not empty; leaving $AWAY_DIR alone"
    fi
    mv -T "$AWAY_DIR" "$DRIVE_DIR"
}

dispatch "install start stop kill status fail-drive restore-drive" "$@"

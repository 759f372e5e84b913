# shellcheck shell=bash
# Shared helpers for the infra/ scripts. Source it; do not execute it.
#
# Conventions for every script that sources this file:
#   - stdout carries only the final useful line (an address); everything else goes to stderr;
#   - installs go under $CAMI_CACHE (default ~/.cache/cami) and are skipped when already done;
#   - a started server is detached from the caller (own session) and recorded in DIR/<name>.pid.

CAMI_CACHE="${CAMI_CACHE:-$HOME/.cache/cami}"
export CAMI_CACHE
INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CAMI_LOG_PREFIX="${CAMI_LOG_PREFIX:-$(basename "$0" .sh)}"

log() { printf '[%s] %s\n' "$CAMI_LOG_PREFIX" "$*" >&2; }

# Print a message to stderr and exit non-zero.
die() {
    printf '[%s] error: %s\n' "$CAMI_LOG_PREFIX" "$*" >&2
    exit 1
}

# Only log when CAMI_VERBOSE is set (keeps successful runs quiet).
debug() { [[ -n "${CAMI_VERBOSE:-}" ]] && log "$@"; return 0; }

require_cmd() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is not on PATH; it is needed by $(basename "$0")"
    done
}

# Run "$@" while holding an exclusive lock on FILE, so that parallel installs do not race.
# Usage: with_lock FILE cmd args...
with_lock() {
    local lock_file="$1"
    shift
    mkdir -p "$(dirname "$lock_file")"
    (
        flock -w 1800 9 || die "timed out waiting for lock $lock_file"
        "$@"
    ) 9>"$lock_file"
}

# Print the last lines of each existing log file to stderr.
# Usage: show_log_tail LINES FILE...
show_log_tail() {
    local lines="$1" f
    shift
    for f in "$@"; do
        [[ -s "$f" ]] || continue
        printf -- '----- last %s lines of %s -----\n' "$lines" "$f" >&2
        tail -n "$lines" "$f" >&2 || true
    done
}

# Usage: abort_start PID MESSAGE LOG...: a start that failed. Shows the logs' last lines, kills
# the half-started PID (empty: none), removes $PID_FILE and stops with MESSAGE.
abort_start() {
    local pid="${1:-}" message="$2"
    shift 2
    show_log_tail 40 "$@"
    if [[ -n "$pid" ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 10 || true
    fi
    rm -f "${PID_FILE:?the calling script sets PID_FILE}"
    die "$message"
}

is_port_number() { [[ "$1" =~ ^[0-9]+$ ]] && (("$1" > 0 && "$1" < 65536)); }

# True when something accepts TCP connections on HOST:PORT.
port_open() {
    local host="$1" port="$2"
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# Wait until HOST:PORT accepts connections. Returns 1 after TIMEOUT seconds.
# Usage: wait_for_port HOST PORT TIMEOUT
wait_for_port() {
    local host="$1" port="$2" timeout_s="$3"
    local deadline=$((SECONDS + timeout_s))
    until port_open "$host" "$port"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# State letter of a task from its /proc/.../stat file (field 3; field 2 may contain spaces).
_proc_state() { sed -e 's/^.*) //' "$1" 2>/dev/null | cut -d' ' -f1; }

# True when PID names a live process. A zombie counts as dead only once all of its threads are gone:
# after SIGKILL a multi-threaded JVM's leader turns Z while other threads still hold its sockets, and
# the reaper (PID 1 here) may take a while.
pid_alive() {
    local pid="$1" state task
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(_proc_state "/proc/$pid/stat")"
    [[ -n "$state" ]] || return 1
    [[ "$state" == "Z" || "$state" == "X" ]] || return 0
    for task in "/proc/$pid/task/"*/stat; do
        state="$(_proc_state "$task")"
        [[ -z "$state" || "$state" == "Z" || "$state" == "X" ]] || return 0
    done
    return 1
}

# Print the pid stored in PIDFILE if that process is alive and its command line contains MARKER
# (guards against pid reuse). Returns 1 otherwise.
# Usage: read_live_pid PIDFILE MARKER
read_live_pid() {
    local pid_file="$1" marker="$2" pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(tr -dc '0-9' <"$pid_file")"
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
    printf '%s\n' "$pid"
}

# Wait until PID is gone. Returns 1 after TIMEOUT seconds.
wait_pid_gone() {
    local pid="$1" timeout_s="$2"
    local deadline=$((SECONDS + timeout_s))
    while pid_alive "$pid"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# Start "$@" detached from the caller (new session, stdin from /dev/null, output to LOGFILE)
# and write its pid to PIDFILE. The recorded pid is the server process itself (exec), so
# signals sent to it reach the server and not a wrapper shell.
# Usage: spawn_detached PIDFILE LOGFILE cmd args...
spawn_detached() {
    local pid_file="$1" out_file="$2"
    shift 2
    rm -f "$pid_file"
    setsid -f bash -c 'echo $$ >"$1.tmp" && mv -f "$1.tmp" "$1" && shift && exec "$@"' \
        _ "$pid_file" "$@" </dev/null >>"$out_file" 2>&1
    local deadline=$((SECONDS + 10))
    until [[ -s "$pid_file" ]]; do
        ((SECONDS < deadline)) || die "process did not record its pid in $pid_file"
        sleep 0.05
    done
}

# SIGTERM (or SIGNAL), wait up to TIMEOUT seconds, then SIGKILL. Removes PIDFILE.
# Usage: stop_pid_file PIDFILE MARKER TIMEOUT [SIGNAL]
stop_pid_file() {
    local pid_file="$1" marker="$2" timeout_s="$3" signal="${4:-TERM}" pid
    if ! pid="$(read_live_pid "$pid_file" "$marker")"; then
        debug "not running ($pid_file)"
        rm -f "$pid_file"
        return 0
    fi
    kill "-$signal" "$pid" 2>/dev/null || true
    if ! wait_pid_gone "$pid" "$timeout_s"; then
        log "pid $pid did not exit ${timeout_s}s after SIG$signal; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 10 || die "pid $pid survived SIGKILL"
    fi
    rm -f "$pid_file"
}

# SIGKILL immediately (crash simulation) and wait until the process is gone. Removes PIDFILE.
# Usage: kill_pid_file PIDFILE MARKER
kill_pid_file() {
    local pid_file="$1" marker="$2" pid
    if ! pid="$(read_live_pid "$pid_file" "$marker")"; then
        debug "not running ($pid_file)"
        rm -f "$pid_file"
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait_pid_gone "$pid" 10 || die "pid $pid survived SIGKILL"
    rm -f "$pid_file"
}

# Absolute path of DIR (created if needed).
abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd)
}

# status of a server started by one of our scripts: running -> print the file naming where it
# listens (address, endpoint, URL) and return 0; not running -> return 1
server_status() { # PID_FILE MARKER ADDRESS_FILE
    local pid
    if pid="$(read_live_pid "$1" "$2")"; then
        debug "running (pid $pid)"
        cat "$3" 2>/dev/null || true
        return 0
    fi
    debug "not running"
    return 1
}

# main() of a script with subcommands: "SUB ARGS..." runs cmd_SUB ARGS... when SUB is one of
# SUBCOMMANDS (a space-separated list); help prints the usage
dispatch() { # "SUBCOMMANDS" SUB [ARGS...]
    local known="$1"
    shift
    (($#)) || usage
    local sub="$1"
    shift
    case "$sub" in
    -h | --help | help) usage ;;
    esac
    [[ " $known " == *" $sub "* ]] || die "unknown subcommand '$sub' (${known// /|})"
    "cmd_$sub" "$@"
}

# ---- Debian packages ---------------------------------------------------------------------------
# debian_install LOG_FILE PACKAGE...: apt-get install, non-interactive, as root (or password-less
# sudo), services not started (a temporary policy-rc.d, removed again), `apt-get update` only when
# apt does not know every package yet or the install failed.
DEBIAN_POLICY_RC=/usr/sbin/policy-rc.d
_DEBIAN_SUDO=()
_DEBIAN_TEMP_POLICY=""
_debian_root() { "${_DEBIAN_SUDO[@]}" "$@"; }
_debian_remove_policy() {
    if [[ -n "$_DEBIAN_TEMP_POLICY" ]]; then
        _debian_root rm -f "$DEBIAN_POLICY_RC" || true
        _DEBIAN_TEMP_POLICY=""
    fi
}
debian_install() {
    local apt_log="$1"
    shift
    local packages=("$@") pkg updated=""
    require_cmd apt-get apt-cache
    if [[ "$(id -u)" == 0 ]]; then
        _DEBIAN_SUDO=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        _DEBIAN_SUDO=(sudo -n)
    else
        die "installing ${packages[*]} needs root (or password-less sudo); as root run: apt-get install -y ${packages[*]}"
    fi
    mkdir -p "$(dirname "$apt_log")"
    : >"$apt_log"
    log "installing ${packages[*]} with apt-get"
    if [[ ! -e "$DEBIAN_POLICY_RC" ]]; then
        printf '#!/bin/sh\n# temporary, written by infra/lib.sh debian_install\nexit 101\n' |
            _debian_root tee "$DEBIAN_POLICY_RC" >/dev/null
        _debian_root chmod 755 "$DEBIAN_POLICY_RC"
        _DEBIAN_TEMP_POLICY=1
        trap _debian_remove_policy EXIT
    fi
    local update=(env DEBIAN_FRONTEND=noninteractive apt-get update -q)
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${packages[@]}")
    for pkg in "${packages[@]}"; do
        if [[ -z "$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" { print $2 }')" ]]; then
            _debian_root "${update[@]}" >>"$apt_log" 2>&1 ||
                { show_log_tail 30 "$apt_log"; die "apt-get update failed (log: $apt_log)"; }
            updated=1
            break
        fi
    done
    if ! _debian_root "${install[@]}" </dev/null >>"$apt_log" 2>&1; then
        [[ -z "$updated" ]] || { show_log_tail 30 "$apt_log"; die "apt-get install failed (log: $apt_log)"; }
        _debian_root "${update[@]}" >>"$apt_log" 2>&1 ||
            { show_log_tail 30 "$apt_log"; die "apt-get update failed (log: $apt_log)"; }
        _debian_root "${install[@]}" </dev/null >>"$apt_log" 2>&1 ||
            { show_log_tail 30 "$apt_log"; die "apt-get install failed (log: $apt_log)"; }
    fi
    _debian_remove_policy
}

#!/usr/bin/env bash
# haproxy (Debian package) as the TCP load balancer in front of several `cami serve` nodes: one address
# for the hospitals' DICOM senders and one for the HTTP API, spread over the nodes, a node that stops
# answering taken out within seconds.
#
#   infra/haproxy.sh install     # apt-get install -y haproxy (skipped when /usr/sbin/haproxy exists)
#   infra/haproxy.sh start  --dir DIR [--listen PORT --backend HOST:PORT ...]
#                           [--http-listen PORT --http-backend HOST:PORT ...] [--bind ADDRESS]
#                           [--balance leastconn|roundrobin] [--check-interval TIME]
#                           [--http-check-path PATH] [--http-check-tls] [--send-proxy]
#                                     # prints BIND:PORT of the first frontend (--listen, else --http-listen)
#   infra/haproxy.sh stop    --dir DIR   # SIGTERM, up to 30 s, then SIGKILL
#   infra/haproxy.sh kill    --dir DIR   # SIGKILL now
#   infra/haproxy.sh status  --dir DIR   # exit 0 when running, prints the address
#   infra/haproxy.sh servers --dir DIR   # one line per node: BACKEND/SERVER HOST:PORT STATUS (UP, DOWN...)
#
# DIR holds one balancer: haproxy.cfg (generated on every start), haproxy.out (haproxy's log: one line
#   per connection, which node took it, and every node going DOWN or UP), haproxy.pid, haproxy.sock
#   (the admin socket `servers` reads; /tmp/cami-haproxy-<hash of DIR>.sock when DIR is too deep for
#   haproxy's 97-byte limit), address.
# Frontends (mode tcp: the bytes pass untouched, TLS included):
#   dicom  on --listen, over the --backend nodes (their DICOM ports): health check `option tcp-check`
#          (a connection that opens is a node up; nothing is sent, so no association is started);
#   http   on --http-listen, over the --http-backend nodes (their HTTP ports): health check
#          `GET /healthz` expecting 200 (--http-check-path /readyz also takes out a node whose
#          backends or projections are behind, see Health probes in the README; with --http-check-tls
#          over TLS, for nodes serving HTTPS).
#   At least one frontend; each needs at least one backend. Servers are named dicom1.., http1.. in the
#   order given.
# Defaults: --bind 127.0.0.1, --balance leastconn (a DICOM association may carry one object or
#   thousands), --check-interval 2s; a node is DOWN after 2 failed checks and UP after 2 good ones.
#   A connection that cannot reach its node is retried and, the last time, sent to another node
#   (option redispatch), so a node that died a moment ago costs the sender nothing. Idle timeouts 1 h
#   (a modality may pause long inside an association).
# Note: behind the balancer the nodes see the balancer's address, not the sender's (senders.toml's
#   `addresses` would then have to name the balancer's host) unless --send-proxy is given: each DICOM
#   connection (and each connection check) then begins with a PROXY protocol v2 header naming the
#   sender, which the nodes read from the addresses in their CAMI_DICOM_PROXY_FROM (and require).
# The Debian package would start a system-wide haproxy on install; a temporary policy-rc.d prevents it.
# Environment: CAMI_HAPROXY (default /usr/sbin/haproxy), CAMI_HAPROXY_START_TIMEOUT (default 30 s).
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(haproxy)
HAPROXY_BIN="${CAMI_HAPROXY:-/usr/sbin/haproxy}"
START_TIMEOUT="${CAMI_HAPROXY_START_TIMEOUT:-30}"
STOP_TIMEOUT=30

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

# ---- install -----------------------------------------------------------------------------------

is_installed() { [[ -x "$HAPROXY_BIN" ]]; }

do_install() {
    if is_installed; then
        debug "haproxy already installed"
        return 0
    fi
    debian_install "$CAMI_CACHE/haproxy-apt.log" "${PACKAGES[@]}"
    is_installed || die "apt-get finished but $HAPROXY_BIN is missing"
}

cmd_install() {
    (($# == 0)) || die "install takes no options"
    with_lock "$CAMI_CACHE/.haproxy-install.lock" do_install
}

# ---- options shared by start/stop/kill/status/servers ------------------------------------------

DIR=""
BIND=127.0.0.1
LISTEN=""
HTTP_LISTEN=""
BACKENDS=()
HTTP_BACKENDS=()
BALANCE=leastconn
CHECK_INTERVAL=2s
HTTP_CHECK_PATH=/healthz
HTTP_CHECK_TLS=""
SEND_PROXY=""

parse_opts() {
    while (($#)); do
        case "$1" in
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --bind) BIND="${2:?--bind needs a value}"; shift 2 ;;
        --listen) LISTEN="${2:?--listen needs a value}"; shift 2 ;;
        --backend) BACKENDS+=("${2:?--backend needs a value}"); shift 2 ;;
        --http-listen) HTTP_LISTEN="${2:?--http-listen needs a value}"; shift 2 ;;
        --http-backend) HTTP_BACKENDS+=("${2:?--http-backend needs a value}"); shift 2 ;;
        --balance) BALANCE="${2:?--balance needs a value}"; shift 2 ;;
        --check-interval) CHECK_INTERVAL="${2:?--check-interval needs a value}"; shift 2 ;;
        --http-check-path) HTTP_CHECK_PATH="${2:?--http-check-path needs a value}"; shift 2 ;;
        --http-check-tls) HTTP_CHECK_TLS=1; shift ;;
        --send-proxy) SEND_PROXY=1; shift ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see: $0 --help)" ;;
        esac
    done
    [[ -n "$DIR" ]] || die "--dir is required"
    DIR="$(abs_dir "$DIR")"
    PID_FILE="$DIR/haproxy.pid"
    # the balancer's command line names DIR/haproxy.cfg: that identifies our process
    PID_MARKER="$DIR/haproxy.cfg"
    SOCKET="$DIR/haproxy.sock"
    # haproxy takes socket paths of at most 97 bytes: a deep DIR gets one in /tmp named after it
    if ((${#SOCKET} > 97)); then
        SOCKET="/tmp/cami-haproxy-$(printf '%s' "$DIR" | sha256sum | cut -c1-16).sock"
    fi
}

# HOST:PORT with an IPv4 address, a host name or a bracketed IPv6 address, and a port 1-65535.
is_host_port() {
    local port="${1##*:}" host="${1%:*}"
    [[ "$1" == *:* ]] && is_port_number "$port" &&
        [[ "$host" =~ ^[A-Za-z0-9.-]+$ || "$host" =~ ^\[[0-9A-Fa-f:.]+\]$ ]]
}

check_start_opts() {
    [[ -n "$LISTEN$HTTP_LISTEN" ]] || die "give --listen PORT (DICOM) or --http-listen PORT (HTTP), or both"
    local b
    if [[ -n "$LISTEN" ]]; then
        is_port_number "$LISTEN" || die "--listen must be a TCP port, got '$LISTEN'"
        ((${#BACKENDS[@]})) || die "--listen needs at least one --backend HOST:PORT"
    else
        ((${#BACKENDS[@]} == 0)) || die "--backend needs --listen PORT"
    fi
    if [[ -n "$HTTP_LISTEN" ]]; then
        is_port_number "$HTTP_LISTEN" || die "--http-listen must be a TCP port, got '$HTTP_LISTEN'"
        ((${#HTTP_BACKENDS[@]})) || die "--http-listen needs at least one --http-backend HOST:PORT"
    else
        ((${#HTTP_BACKENDS[@]} == 0)) || die "--http-backend needs --http-listen PORT"
    fi
    [[ "$LISTEN" != "$HTTP_LISTEN" ]] || die "--listen and --http-listen must differ"
    for b in "${BACKENDS[@]}" "${HTTP_BACKENDS[@]}"; do
        is_host_port "$b" || die "a backend must be HOST:PORT, got '$b'"
    done
    [[ "$BIND" =~ ^[0-9A-Za-z.:-]+$ ]] || die "--bind must be an address, got '$BIND'"
    [[ "$BALANCE" == leastconn || "$BALANCE" == roundrobin ]] || die "--balance must be leastconn or roundrobin"
    [[ "$CHECK_INTERVAL" =~ ^[0-9]+(ms|s|m)?$ ]] || die "--check-interval must be a time like 2s or 500ms"
    [[ "$HTTP_CHECK_PATH" =~ ^/[A-Za-z0-9/_.~=-]*$ ]] || die "--http-check-path must be a path like /healthz"
}

# BIND:PORT as haproxy's `bind` wants it (IPv6 in brackets is written bare: "::1:PORT" is ambiguous)
bind_address() { # PORT
    if [[ "$BIND" == *:* ]]; then printf '[%s]:%s' "$BIND" "$1"; else printf '%s:%s' "$BIND" "$1"; fi
}

write_config() {
    local tmp="$DIR/haproxy.cfg.tmp" i
    {
        printf '# Generated by infra/haproxy.sh; rewritten on every start.\n'
        printf 'global\n'
        printf '    log stdout format raw local0 info\n'
        printf '    maxconn 4096\n'
        printf '    stats socket %s mode 600 level admin\n' "$SOCKET"
        printf '\ndefaults\n'
        printf '    mode tcp\n'
        printf '    log global\n'
        printf '    option tcplog\n'
        printf '    timeout connect 5s\n'
        printf '    timeout client 1h\n'
        printf '    timeout server 1h\n'
        printf '    timeout check 2s\n'
        printf '    retries 2\n'
        printf '    option redispatch\n'
        printf '    default-server inter %s fall 2 rise 2\n' "$CHECK_INTERVAL"
        if [[ -n "$LISTEN" ]]; then
            printf '\nfrontend dicom\n    bind %s\n    default_backend dicom\n' "$(bind_address "$LISTEN")"
            printf '\nbackend dicom\n    balance %s\n    option tcp-check\n' "$BALANCE"
            for i in "${!BACKENDS[@]}"; do
                printf '    server dicom%s %s check%s\n' "$((i + 1))" "${BACKENDS[i]}" \
                    "${SEND_PROXY:+ send-proxy-v2 check-send-proxy}"
            done
        fi
        if [[ -n "$HTTP_LISTEN" ]]; then
            printf '\nfrontend http\n    bind %s\n    default_backend http\n' "$(bind_address "$HTTP_LISTEN")"
            printf '\nbackend http\n    balance %s\n    option httpchk\n' "$BALANCE"
            printf '    http-check send meth GET uri %s ver HTTP/1.1 hdr Host localhost\n' "$HTTP_CHECK_PATH"
            printf '    http-check expect status 200\n'
            for i in "${!HTTP_BACKENDS[@]}"; do
                printf '    server http%s %s check%s\n' "$((i + 1))" "${HTTP_BACKENDS[i]}" \
                    "${HTTP_CHECK_TLS:+ check-ssl verify none}"
            done
        fi
    } >"$tmp"
    mv -f "$tmp" "$DIR/haproxy.cfg"
}

fail_start() { abort_start "${1:-}" "$2" "$DIR/haproxy.out"; }

cmd_start() {
    parse_opts "$@"
    check_start_opts
    is_installed || die "haproxy is not installed ($HAPROXY_BIN); run: bash $INFRA_DIR/haproxy.sh install"
    require_cmd setsid
    local pid
    if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
        debug "already running (pid $pid)"
        cat "$DIR/address"
        return 0
    fi
    local port
    for port in $LISTEN $HTTP_LISTEN; do
        ! port_open 127.0.0.1 "$port" || die "port $port is already in use by another process"
    done
    write_config
    "$HAPROXY_BIN" -c -q -f "$DIR/haproxy.cfg" >>"$DIR/haproxy.out" 2>&1 ||
        fail_start "" "the generated $DIR/haproxy.cfg does not pass haproxy -c"
    rm -f "$SOCKET"
    printf '\n===== start %s =====\n' "$(date -Is)" >>"$DIR/haproxy.out"
    spawn_detached "$PID_FILE" "$DIR/haproxy.out" "$HAPROXY_BIN" -db -f "$DIR/haproxy.cfg"
    pid="$(cat "$PID_FILE")"
    local host="$BIND"
    [[ "$host" != 0.0.0.0 ]] || host=127.0.0.1
    [[ "$host" != :: ]] || host=::1
    local deadline=$((SECONDS + START_TIMEOUT))
    for port in $LISTEN $HTTP_LISTEN; do
        until port_open "$host" "$port" && [[ -S "$SOCKET" ]]; do
            pid_alive "$pid" || fail_start "" "haproxy exited during start-up (pid $pid)"
            ((SECONDS < deadline)) || fail_start "$pid" "haproxy not listening on port $port after ${START_TIMEOUT}s"
            sleep 0.1
        done
    done
    bind_address "${LISTEN:-$HTTP_LISTEN}" >"$DIR/address"
    printf '\n' >>"$DIR/address"
    cat "$DIR/address"
}

cmd_stop() {
    parse_opts "$@"
    stop_pid_file "$PID_FILE" "$PID_MARKER" "$STOP_TIMEOUT"
}

cmd_kill() {
    parse_opts "$@"
    kill_pid_file "$PID_FILE" "$PID_MARKER"
}

cmd_status() {
    parse_opts "$@"
    server_status "$PID_FILE" "$PID_MARKER" "$DIR/address"
}

# `show stat` on the admin socket: the servers' lines (not the FRONTEND/BACKEND totals).
cmd_servers() {
    parse_opts "$@"
    read_live_pid "$PID_FILE" "$PID_MARKER" >/dev/null || die "haproxy is not running ($DIR)"
    require_cmd python3
    python3 - "$SOCKET" <<'EOF'
import csv, socket, sys

with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
    admin.settimeout(5)
    admin.connect(sys.argv[1])
    admin.sendall(b"show stat\n")
    chunks = []
    while chunk := admin.recv(65536):
        chunks.append(chunk)
text = b"".join(chunks).decode().lstrip("# ")
for row in csv.DictReader(line for line in text.splitlines() if line.strip()):
    if row["svname"] not in ("FRONTEND", "BACKEND"):
        print(f"{row['pxname']}/{row['svname']} {row['addr']} {row['status']}")
EOF
}

dispatch "install start stop kill status servers" "$@"

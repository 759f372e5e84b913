#!/usr/bin/env bash
# Prometheus (Debian package) scraping CAMI's /metrics, on loopback, for tests and a single-host setup.
#
#   infra/prometheus.sh install     # apt-get install -y prometheus (skipped when /usr/bin/prometheus exists)
#   infra/prometheus.sh start  --dir DIR --target HOST:PORT [--port N] [--scheme http|https]
#                              [--token-file FILE] [--rules FILE ...] [--interval 1s]
#                                   # prints http://127.0.0.1:PORT
#   infra/prometheus.sh stop   --dir DIR      # SIGTERM, up to 30 s, then SIGKILL
#   infra/prometheus.sh kill   --dir DIR      # SIGKILL now
#   infra/prometheus.sh status --dir DIR      # exit 0 when running, prints the URL
#
# DIR holds one server: prometheus.yml (generated on every start: one job "cami" scraping TARGET's
#   /metrics every --interval, with the bearer token of --token-file when given, i.e. CAMI's
#   $CAMI_HOME/metrics.token), data/ (the TSDB), prometheus.out (log), prometheus.pid, url.
# Defaults: --port 9090, --scheme http, --interval 15s. Prometheus listens on 127.0.0.1 only.
# Each --rules FILE (e.g. infra/prometheus/cami-rules.yml) is loaded as a rule file.
# The Debian package would start a system-wide service on install; a temporary policy-rc.d prevents it.
# Environment: CAMI_PROMETHEUS (default /usr/bin/prometheus), CAMI_PROMETHEUS_START_TIMEOUT (default 60 s).
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROMETHEUS_BIN="${CAMI_PROMETHEUS:-/usr/bin/prometheus}"
START_TIMEOUT="${CAMI_PROMETHEUS_START_TIMEOUT:-60}"
STOP_TIMEOUT=30
POLICY_RC=/usr/sbin/policy-rc.d

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

# ---- install -----------------------------------------------------------------------------------

SUDO=()
as_root() { "${SUDO[@]}" "$@"; }

TEMP_POLICY=""
remove_temp_policy() {
    if [[ -n "$TEMP_POLICY" ]]; then
        as_root rm -f "$POLICY_RC" || true
        TEMP_POLICY=""
    fi
}

cmd_install() {
    (($# == 0)) || die "install takes no options"
    if [[ -x "$PROMETHEUS_BIN" && -x /usr/bin/promtool ]]; then
        debug "prometheus already installed"
        return 0
    fi
    require_cmd apt-get
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null ||
            die "installing prometheus needs root (or password-less sudo); as root run: apt-get install -y prometheus"
        SUDO=(sudo -n)
    fi
    mkdir -p "$CAMI_CACHE"
    local apt_log="$CAMI_CACHE/prometheus-apt.log"
    : >"$apt_log"
    log "installing prometheus with apt-get"
    if [[ ! -e "$POLICY_RC" ]]; then
        printf '#!/bin/sh\n# temporary, written by infra/prometheus.sh install\nexit 101\n' | as_root tee "$POLICY_RC" >/dev/null
        as_root chmod 755 "$POLICY_RC"
        TEMP_POLICY=1
        trap remove_temp_policy EXIT
    fi
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus)
    if ! as_root "${install[@]}" </dev/null >>"$apt_log" 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 &&
            as_root "${install[@]}" </dev/null >>"$apt_log" 2>&1 ||
            { show_log_tail 30 "$apt_log"; die "apt-get install prometheus failed (log: $apt_log)"; }
    fi
    remove_temp_policy
    [[ -x "$PROMETHEUS_BIN" && -x /usr/bin/promtool ]] || die "apt-get finished but $PROMETHEUS_BIN or promtool is missing"
}

# ---- options shared by start/stop/kill/status --------------------------------------------------

DIR=""
PORT=9090
TARGET=""
SCHEME=http
TOKEN_FILE=""
INTERVAL=15s
RULES=()

parse_opts() {
    while (($#)); do
        case "$1" in
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --target) TARGET="${2:?--target needs a value}"; shift 2 ;;
        --scheme) SCHEME="${2:?--scheme needs a value}"; shift 2 ;;
        --token-file) TOKEN_FILE="${2:?--token-file needs a value}"; shift 2 ;;
        --rules) RULES+=("${2:?--rules needs a value}"); shift 2 ;;
        --interval) INTERVAL="${2:?--interval needs a value}"; shift 2 ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see: $0 --help)" ;;
        esac
    done
    [[ -n "$DIR" ]] || die "--dir is required"
    is_port_number "$PORT" || die "--port must be a TCP port, got '$PORT'"
    DIR="$(abs_dir "$DIR")"
    PID_FILE="$DIR/prometheus.pid"
    # the server's command line names DIR/prometheus.yml: that identifies our process
    PID_MARKER="$DIR/prometheus.yml"
}

# a YAML (JSON) string literal
yaml_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

write_config() {
    local tmp="$DIR/prometheus.yml.tmp" rule
    {
        printf 'global:\n  scrape_interval: %s\n  evaluation_interval: %s\n' "$INTERVAL" "$INTERVAL"
        if ((${#RULES[@]})); then
            printf 'rule_files:\n'
            for rule in "${RULES[@]}"; do
                [[ -f "$rule" ]] || die "--rules: no such file '$rule'"
                printf '  - %s\n' "$(yaml_str "$(cd "$(dirname "$rule")" && pwd)/$(basename "$rule")")"
            done
        fi
        printf 'scrape_configs:\n  - job_name: cami\n    metrics_path: /metrics\n    scheme: %s\n' "$SCHEME"
        if [[ -n "$TOKEN_FILE" ]]; then
            [[ -f "$TOKEN_FILE" ]] || die "--token-file: no such file '$TOKEN_FILE'"
            printf '    authorization:\n      type: Bearer\n      credentials_file: %s\n' "$(yaml_str "$TOKEN_FILE")"
        fi
        printf '    static_configs:\n      - targets: [%s]\n' "$(yaml_str "$TARGET")"
    } >"$tmp"
    mv -f "$tmp" "$DIR/prometheus.yml"
}

http_ok() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }

fail_start() { abort_start "${1:-}" "$2" "$DIR/prometheus.out"; }

cmd_start() {
    parse_opts "$@"
    [[ -n "$TARGET" ]] || die "--target HOST:PORT is required"
    [[ "$SCHEME" == http || "$SCHEME" == https ]] || die "--scheme must be http or https"
    [[ -x "$PROMETHEUS_BIN" ]] || die "Prometheus is not installed ($PROMETHEUS_BIN); run: bash $INFRA_DIR/prometheus.sh install"
    require_cmd setsid python3
    local pid
    if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
        debug "already running (pid $pid)"
        cat "$DIR/url"
        return 0
    fi
    port_open 127.0.0.1 "$PORT" && die "port $PORT is already in use by another process"
    mkdir -p "$DIR/data"
    write_config
    /usr/bin/promtool check config "$DIR/prometheus.yml" >>"$DIR/prometheus.out" 2>&1 ||
        fail_start "" "the generated $DIR/prometheus.yml does not pass promtool check config"
    printf '\n===== start %s =====\n' "$(date -Is)" >>"$DIR/prometheus.out"
    spawn_detached "$PID_FILE" "$DIR/prometheus.out" "$PROMETHEUS_BIN" \
        --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data" \
        --web.listen-address="127.0.0.1:$PORT" --web.enable-lifecycle
    pid="$(cat "$PID_FILE")"
    local url="http://127.0.0.1:$PORT"
    local deadline=$((SECONDS + START_TIMEOUT))
    until http_ok "$url/-/ready"; do
        pid_alive "$pid" || fail_start "" "Prometheus exited during start-up (pid $pid)"
        ((SECONDS < deadline)) || fail_start "$pid" "Prometheus not ready on $url after ${START_TIMEOUT}s"
        sleep 0.2
    done
    printf '%s\n' "$url" >"$DIR/url"
    cat "$DIR/url"
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
    server_status "$PID_FILE" "$PID_MARKER" "$DIR/url"
}

dispatch "install start stop kill status" "$@"

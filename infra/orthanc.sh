#!/usr/bin/env bash
# Orthanc (Debian package) as a hospital's local PACS, on loopback, for tests and benchmarks.
#
#   infra/orthanc.sh start  --dir DIR [--http-port N] [--dicom-port N] [--aet NAME]
#                           [--modality NAME=AET@HOST:PORT ...]     # prints http://127.0.0.1:HTTP_PORT
#   infra/orthanc.sh stop   --dir DIR      # SIGTERM, up to 30 s, then SIGKILL
#   infra/orthanc.sh kill   --dir DIR      # SIGKILL now (crash simulation)
#   infra/orthanc.sh status --dir DIR      # exit 0 when running, prints the REST URL
#
# Orthanc itself is installed by infra/dicom-peers.sh (Debian packages orthanc, orthanc-dicomweb).
# DIR holds everything of one server: orthanc.json (generated on every start), storage/ (DICOM files),
#   index/ (SQLite index), orthanc.out (server log), orthanc.pid, url. Starting again on an existing DIR
#   reuses its data.
# Defaults: --http-port 8042, --dicom-port 4242, --aet HOSPITAL_PACS. Each --modality adds an entry to
#   DicomModalities (NAME is what the REST API calls it: /modalities/NAME/store).
# Access: Orthanc 1.10 has no listen-address option, so both servers listen on every interface; the
#   REST API answers only local clients (RemoteAccessAllowed false, no authentication), and the DICOM
#   server serves only the configured modalities, each from its configured host
#   (DicomAlwaysAllow* false, DicomCheckModalityHost true), and only when called by its own AE title.
# The DICOMweb plugin is loaded when orthanc-dicomweb is installed (REST path /dicom-web/).
# Environment: TCP_NODELAY=1 is always set for Orthanc (dcmtk stalls ~45 ms per object without it);
#   CAMI_ORTHANC (default /usr/sbin/Orthanc), CAMI_ORTHANC_START_TIMEOUT (default 60 s),
#   CAMI_VERBOSE=1 for more logging (and Orthanc's --verbose log).
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORTHANC_BIN="${CAMI_ORTHANC:-/usr/sbin/Orthanc}"
DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
ORTHANC_START_TIMEOUT="${CAMI_ORTHANC_START_TIMEOUT:-60}"
ORTHANC_STOP_TIMEOUT=30

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

# ---- options shared by start/stop/kill/status ------------------------------------------------

DIR=""
HTTP_PORT=8042
DICOM_PORT=4242
AET="HOSPITAL_PACS"
MODALITIES=()

is_ae_title() { [[ "$1" =~ ^[A-Za-z0-9_.-]{1,16}$ ]]; }

parse_opts() {
    while (($#)); do
        case "$1" in
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) DIR="${1#*=}"; shift ;;
        --http-port) HTTP_PORT="${2:?--http-port needs a value}"; shift 2 ;;
        --http-port=*) HTTP_PORT="${1#*=}"; shift ;;
        --dicom-port) DICOM_PORT="${2:?--dicom-port needs a value}"; shift 2 ;;
        --dicom-port=*) DICOM_PORT="${1#*=}"; shift ;;
        --aet) AET="${2:?--aet needs a value}"; shift 2 ;;
        --aet=*) AET="${1#*=}"; shift ;;
        --modality) MODALITIES+=("${2:?--modality needs a value}"); shift 2 ;;
        --modality=*) MODALITIES+=("${1#*=}"); shift ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see: $0 --help)" ;;
        esac
    done
    [[ -n "$DIR" ]] || die "--dir is required"
    is_port_number "$HTTP_PORT" || die "--http-port must be a TCP port, got '$HTTP_PORT'"
    is_port_number "$DICOM_PORT" || die "--dicom-port must be a TCP port, got '$DICOM_PORT'"
    [[ "$HTTP_PORT" != "$DICOM_PORT" ]] || die "--http-port and --dicom-port must differ"
    is_ae_title "$AET" || die "--aet must be 1-16 characters [A-Za-z0-9_.-], got '$AET'"
    DIR="$(abs_dir "$DIR")"
    PID_FILE="$DIR/orthanc.pid"
    # The server's command line is "Orthanc DIR/orthanc.json": that identifies our process.
    PID_MARKER="$DIR/orthanc.json"
}

# JSON string literal of $1 (the values we write are validated, but quote them properly anyway).
json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# "NAME=AET@HOST:PORT" -> a DicomModalities entry.
modality_entry() {
    local spec="$1" name aet host port
    [[ "$spec" =~ ^([A-Za-z0-9_-]+)=([^@]+)@([^:]+):([0-9]+)$ ]] ||
        die "--modality must look like NAME=AET@HOST:PORT, got '$spec'"
    name="${BASH_REMATCH[1]}" aet="${BASH_REMATCH[2]}" host="${BASH_REMATCH[3]}" port="${BASH_REMATCH[4]}"
    is_ae_title "$aet" || die "--modality $name: AE title must be 1-16 characters [A-Za-z0-9_.-], got '$aet'"
    is_port_number "$port" || die "--modality $name: bad port '$port'"
    printf '    %s: { "AET": %s, "Host": %s, "Port": %s, "AllowStorageCommitment": true }' \
        "$(json_str "$name")" "$(json_str "$aet")" "$(json_str "$host")" "$port"
}

write_config() {
    local plugins="" dicomweb="" modalities="" entry sep=""
    for entry in "${MODALITIES[@]}"; do
        modalities+="$sep$(modality_entry "$entry")"
        sep=$',\n'
    done
    if [[ -f "$DICOMWEB_PLUGIN" ]]; then
        plugins="$(json_str "$DICOMWEB_PLUGIN")"
        dicomweb='"DicomWeb": { "Enable": true, "Root": "/dicom-web/", "EnableWado": true, "Ssl": false },'
    fi
    local tmp="$DIR/orthanc.json.tmp"
    cat >"$tmp" <<EOF
{
  "Name": $(json_str "CAMI test PACS $AET"),
  "StorageDirectory": $(json_str "$DIR/storage"),
  "IndexDirectory": $(json_str "$DIR/index"),
  "StorageCompression": false,
  "Plugins": [ $plugins ],
  $dicomweb
  "HttpServerEnabled": true,
  "HttpPort": $HTTP_PORT,
  "HttpDescribeErrors": true,
  "HttpCompressionEnabled": false,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "SslEnabled": false,
  "DicomServerEnabled": true,
  "DicomAet": $(json_str "$AET"),
  "DicomPort": $DICOM_PORT,
  "DicomCheckCalledAet": true,
  "DicomCheckModalityHost": true,
  "DicomAlwaysAllowEcho": false,
  "DicomAlwaysAllowStore": false,
  "DicomAlwaysAllowFind": false,
  "DicomAlwaysAllowGet": false,
  "DicomAlwaysAllowMove": false,
  "DicomModalitiesInDatabase": false,
  "DicomModalities": {
$modalities
  },
  "DicomScuTimeout": 30,
  "DicomScpTimeout": 30,
  "DicomAssociationCloseDelay": 0,
  "StorageCommitmentReportsSize": 100,
  "DefaultEncoding": "Utf8",
  "UnknownSopClassAccepted": false,
  "OverwriteInstances": false,
  "StableAge": 60,
  "SaveJobs": false,
  "JobsHistorySize": 100,
  "ConcurrentJobs": 2,
  "HttpTimeout": 60,
  "HttpRequestTimeout": 60,
  "MetricsEnabled": false
}
EOF
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$tmp" || die "generated invalid JSON in $tmp"
    mv -f "$tmp" "$DIR/orthanc.json"
}

http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
    fi
}

fail_start() { abort_start "${1:-}" "$2" "$DIR/orthanc.out"; }

cmd_start() {
    parse_opts "$@"
    [[ -x "$ORTHANC_BIN" ]] || die "Orthanc is not installed ($ORTHANC_BIN); run: bash $INFRA_DIR/dicom-peers.sh install"
    require_cmd setsid python3
    local pid
    if pid="$(read_live_pid "$PID_FILE" "$PID_MARKER")"; then
        debug "already running (pid $pid)"
        cat "$DIR/url"
        return 0
    fi
    if port_open 127.0.0.1 "$HTTP_PORT"; then
        die "HTTP port $HTTP_PORT is already in use by another process"
    fi
    if port_open 127.0.0.1 "$DICOM_PORT"; then
        die "DICOM port $DICOM_PORT is already in use by another process"
    fi
    mkdir -p "$DIR/storage" "$DIR/index"
    write_config
    local args=("$DIR/orthanc.json")
    [[ -z "${CAMI_VERBOSE:-}" ]] || args=(--verbose "${args[@]}")
    printf '\n===== start %s =====\n' "$(date -Is)" >>"$DIR/orthanc.out"
    TCP_NODELAY=1 spawn_detached "$PID_FILE" "$DIR/orthanc.out" "$ORTHANC_BIN" "${args[@]}"
    pid="$(cat "$PID_FILE")"
    local url="http://127.0.0.1:$HTTP_PORT"
    local deadline=$((SECONDS + ORTHANC_START_TIMEOUT))
    until http_ok "$url/system" && port_open 127.0.0.1 "$DICOM_PORT"; do
        pid_alive "$pid" || fail_start "" "Orthanc exited during start-up (pid $pid)"
        ((SECONDS < deadline)) || fail_start "$pid" "Orthanc not answering on $url/system after ${ORTHANC_START_TIMEOUT}s"
        sleep 0.2
    done
    printf '%s\n' "$url" >"$DIR/url"
    cat "$DIR/url"
}

cmd_stop() {
    parse_opts "$@"
    stop_pid_file "$PID_FILE" "$PID_MARKER" "$ORTHANC_STOP_TIMEOUT"
}

cmd_kill() {
    parse_opts "$@"
    kill_pid_file "$PID_FILE" "$PID_MARKER"
}

cmd_status() {
    parse_opts "$@"
    server_status "$PID_FILE" "$PID_MARKER" "$DIR/url"
}

dispatch "start stop kill status" "$@"

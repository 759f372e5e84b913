#!/usr/bin/env bash
# Peers used by integration tests and benchmarks: dcmtk (storescu, findscu, movescu, echoscu,
# storescp), Orthanc with its DICOMweb plugin, and Chromium with its WebDriver (the headless browser
# of the study-page test; NSS's certutil makes it trust a test CA), from the Debian packages.
#
#   infra/dicom-peers.sh install   # apt-get install -y dcmtk orthanc orthanc-dicomweb chromium chromium-driver libnss3-tools
#   infra/dicom-peers.sh check     # prints the installed versions; exit 1 when something is missing
#
# install is skipped when the binaries and the plugin are already there; `apt-get update` runs only when
# a package has to be installed and apt does not know it (or the first install attempt fails).
# The Debian orthanc package would start a system-wide Orthanc service on install; a temporary
# policy-rc.d prevents that (tests start their own Orthanc on free ports).
# Call dcmtk's tools by full path (/usr/bin/storescu): pynetdicom installs same-named scripts.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(dcmtk orthanc orthanc-dicomweb chromium chromium-driver libnss3-tools)
STORESCU=/usr/bin/storescu
ORTHANC=/usr/sbin/Orthanc
DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
CHROMEDRIVER=/usr/bin/chromedriver
CERTUTIL=/usr/bin/certutil
POLICY_RC=/usr/sbin/policy-rc.d

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

is_installed() { [[ -x "$STORESCU" && -x "$ORTHANC" && -f "$DICOMWEB_PLUGIN" && -x "$CHROMEDRIVER" && -x "$CERTUTIL" ]]; }

SUDO=()
as_root() { "${SUDO[@]}" "$@"; }

pick_sudo() {
    if [[ "$(id -u)" == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "installing ${PACKAGES[*]} needs root (or password-less sudo); as root run: apt-get install -y ${PACKAGES[*]}"
    fi
}

apt_knows_all() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        [[ -n "$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" { print $2 }')" ]] ||
            return 1
    done
}

APT_LOG=""
apt_update() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$APT_LOG" 2>&1
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${PACKAGES[@]}" </dev/null >>"$APT_LOG" 2>&1
}

TEMP_POLICY=""
remove_temp_policy() {
    if [[ -n "$TEMP_POLICY" ]]; then
        as_root rm -f "$POLICY_RC" || true
        TEMP_POLICY=""
    fi
}

do_install() {
    if is_installed; then
        debug "dcmtk, Orthanc and Chromium already installed"
        return 0
    fi
    require_cmd apt-get apt-cache
    pick_sudo
    mkdir -p "$CAMI_CACHE"
    APT_LOG="$CAMI_CACHE/dicom-peers-apt.log"
    : >"$APT_LOG"
    log "installing ${PACKAGES[*]} with apt-get"
    if [[ ! -e "$POLICY_RC" ]]; then
        printf '#!/bin/sh\n# temporary, written by infra/dicom-peers.sh install\nexit 101\n' |
            as_root tee "$POLICY_RC" >/dev/null
        as_root chmod 755 "$POLICY_RC"
        TEMP_POLICY=1
        trap remove_temp_policy EXIT
    fi
    local updated=""
    if ! apt_knows_all; then
        apt_update || { show_log_tail 30 "$APT_LOG"; die "apt-get update failed (log: $APT_LOG)"; }
        updated=1
    fi
    if ! apt_install; then
        [[ -z "$updated" ]] || { show_log_tail 30 "$APT_LOG"; die "apt-get install failed (log: $APT_LOG)"; }
        apt_update || { show_log_tail 30 "$APT_LOG"; die "apt-get update failed (log: $APT_LOG)"; }
        apt_install || { show_log_tail 30 "$APT_LOG"; die "apt-get install failed (log: $APT_LOG)"; }
    fi
    remove_temp_policy
    is_installed || die "apt-get finished but $STORESCU, $ORTHANC, $DICOMWEB_PLUGIN, $CHROMEDRIVER or $CERTUTIL is missing"
}

cmd_install() {
    (($# == 0)) || die "install takes no options"
    do_install
}

cmd_check() {
    (($# == 0)) || die "check takes no options"
    local missing=0 v
    if [[ -x "$STORESCU" ]]; then
        v="$("$STORESCU" --version 2>/dev/null | sed -n 's/^\$dcmtk: storescu \(v[^ ]*\).*/\1/p')"
        printf 'dcmtk %s (%s)\n' "${v:-unknown}" "$STORESCU"
    else
        printf 'dcmtk: missing (%s)\n' "$STORESCU"
        missing=1
    fi
    if [[ -x "$ORTHANC" ]]; then
        v="$("$ORTHANC" --version 2>/dev/null | head -n 1 | awk '{ print $NF }')"
        printf 'Orthanc %s (%s)\n' "${v:-unknown}" "$ORTHANC"
    else
        printf 'Orthanc: missing (%s)\n' "$ORTHANC"
        missing=1
    fi
    if [[ -f "$DICOMWEB_PLUGIN" ]]; then
        v="$(dpkg-query -W -f='${Version}' orthanc-dicomweb 2>/dev/null || true)"
        printf 'orthanc-dicomweb %s (%s)\n' "${v:-unknown}" "$DICOMWEB_PLUGIN"
    else
        printf 'orthanc-dicomweb: missing (%s)\n' "$DICOMWEB_PLUGIN"
        missing=1
    fi
    ((missing == 0)) || die "some DICOM peers are missing; run: bash $INFRA_DIR/dicom-peers.sh install"
}

dispatch "install check" "$@"

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

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

is_installed() { [[ -x "$STORESCU" && -x "$ORTHANC" && -f "$DICOMWEB_PLUGIN" && -x "$CHROMEDRIVER" && -x "$CERTUTIL" ]]; }

do_install() {
    if is_installed; then
        debug "dcmtk, Orthanc and Chromium already installed"
        return 0
    fi
    debian_install "$CAMI_CACHE/dicom-peers-apt.log" "${PACKAGES[@]}"
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

#!/usr/bin/env bash
# The browser pages' third-party assets, installed with npm and served by the archive from
# api/http/static/vendor/ (not committed; see .gitignore): uPlot, the chart of an organisation's
# throughput on /monitoring/{organisation}. Without it that page still works and says the chart
# is missing. Skipped when the pinned version is already in place.
#
#   infra/web-assets.sh
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UPLOT_VERSION="1.6.32"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$root/api/http/static/vendor/uplot"
stamp="$target/.version"
if [[ "$(cat "$stamp" 2>/dev/null || true)" == "$UPLOT_VERSION" ]]; then
    debug "uPlot $UPLOT_VERSION already in $target"
    exit 0
fi
require_cmd npm
work="$CAMI_CACHE/npm/uplot-$UPLOT_VERSION"
mkdir -p "$work"
if [[ ! -f "$work/node_modules/uplot/dist/uPlot.iife.min.js" ]]; then
    log "installing uPlot $UPLOT_VERSION with npm into $work"
    # --ignore-scripts: nothing of the package runs here; npm checks the tarball's integrity
    npm install --prefix "$work" --no-audit --no-fund --ignore-scripts --no-save "uplot@$UPLOT_VERSION" >/dev/null
fi
mkdir -p "$target"
cp "$work/node_modules/uplot/dist/uPlot.iife.min.js" "$work/node_modules/uplot/dist/uPlot.min.css" \
    "$work/node_modules/uplot/LICENSE" "$target/"
printf '%s' "$UPLOT_VERSION" > "$stamp"
log "uPlot $UPLOT_VERSION in $target"

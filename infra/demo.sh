#!/usr/bin/env bash
# Quick start, part one: install what `cami demo` needs and run it on the embedded defaults
# (SQLite event log, local blob directory, embedded ClickHouse) in ./cami-data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/infra/python.sh" --runtime
# the chart library of the monitoring pages; without it they still work (and say so)
bash "$root/infra/web-assets.sh" || echo "[demo] uPlot not installed: the monitoring charts are off" >&2
cd "$root"
exec "$root/.venv/bin/cami" demo "$@"

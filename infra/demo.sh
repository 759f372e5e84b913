#!/usr/bin/env bash
# Quick start, part one: install what `cami demo` needs and run it on the embedded defaults
# (SQLite event log, local blob directory, embedded ClickHouse) in ./cami-data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/infra/python.sh" --runtime
cd "$root"
exec "$root/.venv/bin/cami" demo "$@"

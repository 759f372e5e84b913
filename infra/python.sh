#!/usr/bin/env bash
# The project's Python environment: .venv at the repository root with CAMI installed (editable)
# plus the development tools. Skipped when pyproject.toml has not changed since the last install.
#
#   infra/python.sh            # runtime + dev dependencies
#   infra/python.sh --runtime  # runtime dependencies only (what `cami demo` needs)
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="[dev]"
[[ "${1:-}" == "--runtime" ]] && extras=""

python="${CAMI_PYTHON:-python3}"
require_cmd "$python"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "CAMI needs Python 3.11 or newer ($("$python" --version 2>&1))"

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.cami-installed"
hash="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
installed="$(cat "$stamp" 2>/dev/null || true)"
# an install with [dev] also serves a runtime-only request
if [[ "$installed" == "$hash[dev]" || "$installed" == "$hash$extras" ]]; then
    debug "python environment up to date"
    exit 0
fi
log "installing CAMI${extras} into .venv (first run downloads the wheels; later runs use pip's cache)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -e "$root$extras"
printf '%s' "$hash$extras" > "$stamp"

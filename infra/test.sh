#!/usr/bin/env bash
# Quick start, part two: install everything (Python deps, Apache Kafka, MinIO, dcmtk, Orthanc, Prometheus,
# haproxy, PostgreSQL) and run the whole test suite: lint, types, then pytest against the real servers.
# Extra arguments go to pytest (e.g. `infra/test.sh tests/unit -x`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
started=$SECONDS
bash infra/python.sh
bash infra/web-assets.sh
bash infra/kafka.sh install
bash infra/minio.sh install
bash infra/dicom-peers.sh install
bash infra/prometheus.sh install
bash infra/haproxy.sh install
bash infra/postgres.sh install
echo "[test] installs done in $((SECONDS - started)) s" >&2

# dcmtk and Orthanc wait ~45 ms per object for delayed ACKs unless Nagle is off (the README says more, under TCP_NODELAY)
export TCP_NODELAY=1
export PATH="$root/.venv/bin:$PATH"

echo "[test] ruff check" >&2
ruff check .
echo "[test] mypy" >&2
mypy
echo "[test] import contracts (layers, no circles, test modules share only tests/support)" >&2
lint-imports
echo "[test] pytest" >&2
# two workers, each taking whole test modules (a module's servers stay in one process; each worker
# starts its own Kafka and MinIO): most tests wait on servers and peers, so two share the 2 cores well
pytest -n 2 --dist loadfile "$@"

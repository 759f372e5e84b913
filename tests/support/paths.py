"""Where the repository is, for tests that start ``python -m ...`` subprocesses from its root."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

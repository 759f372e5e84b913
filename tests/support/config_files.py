"""A configuration file (``cami.toml``) as an operator would leave it: readable by its owner only."""

from __future__ import annotations

from pathlib import Path


def write_config(directory: Path, text: str, name: str = "cami.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path

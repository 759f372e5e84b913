"""``CAMI_MIS_NOTICES``: with several ingest nodes exactly one sends orders' status to the MIS
(each node remembers what it sent); the others do not run the notifier at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.bootstrap import bootstrap
from api.config import Settings

SENDERS = """
[archive]
ae_title = "CAMI"

[[mis]]
application = "MIS@ORG01"
host = "127.0.0.1"
port = 2576
"""


@pytest.mark.parametrize(("switch", "runs"), [("on", True), ("off", False)])
def test_only_the_node_with_mis_notices_on_runs_the_notifier(tmp_path: Path, switch: str, runs: bool) -> None:
    home = tmp_path / "node"
    home.mkdir()
    (home / "senders.toml").write_text(SENDERS, encoding="utf-8")
    settings = Settings.from_env({"CAMI_HOME": str(home), "CAMI_MIS_NOTICES": switch})
    assert settings.mis_notices is runs
    archive = bootstrap(settings)
    try:
        notifier = archive.order_notifier()
        assert (notifier is not None) is runs
        assert (home / "order-notices.db").exists() is runs  # nothing remembered where nothing is sent
    finally:
        archive.close()

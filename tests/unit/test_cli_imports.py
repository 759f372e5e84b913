"""Every ``cami`` command starts by importing the CLI; the heavy engines must not come with it.

chdb alone adds about 240 MB to a process, so a command that never touches ClickHouse (``cami
import`` of a hospital's media, ``cami agent``, ``cami users``) must not load it just because a
module of another command names it at the top (a rebuild's lanes did: ``cami import`` then
peaked 60 MB over its bound in the zip-bomb test)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import ROOT


def test_importing_the_cli_loads_no_warehouse_engine() -> None:
    probe = (
        "import json, sys; import api.cli.main; "
        "print(json.dumps(sorted(m for m in ('chdb', 'pyarrow', 'pandas') if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout) == []

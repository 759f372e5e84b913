"""The README's example command lines run as written (a new user copies them)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from api.auth import UserDirectory
from tests.support.cli import embedded_env, run_cami

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands(prefix: str) -> list[str]:
    """The lines of the README's shell code blocks that start with ``prefix``."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith(prefix)]


def test_the_readme_users_add_example_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands("cami users add ")
    assert commands, "the README shows no `cami users add` example in a code block"
    for command in commands:
        argv = shlex.split(command)
        env = embedded_env(tmp_path / argv[3])
        result = run_cami(*argv[1:], env=env)
        assert result.returncode == 0, (command, result.stderr)
        token = result.stdout.strip()
        assert token and "\n" not in token
        user = UserDirectory(Path(env["CAMI_HOME"]) / "users.toml").authenticate(token)
        assert user is not None and user.name == argv[3]

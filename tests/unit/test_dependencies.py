"""Every third-party module the packages import is installed by the runtime install.

``infra/python.sh --runtime`` (the README's first command, and a hospital's agent host) installs
``[project] dependencies`` only; a module that came with the dev extras alone would make ``cami agent
run`` or ``cami monitor`` fail there with ImportError, while the whole test suite (dev install) passes.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

from tests.support.paths import ROOT

PACKAGES = ("schemas", "streams", "ingest", "projections", "api")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _runtime_closure() -> set[str]:
    """The distributions the runtime install brings: the direct dependencies and theirs (without
    the optional extras of any of them)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    todo = [_name(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            wanted = requires(name) or []
        except PackageNotFoundError:
            continue
        todo.extend(_name(r) for r in wanted if "extra ==" not in r)
    return seen


def _type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> list[str]:
    """The modules ``node`` imports when run (not those under ``if TYPE_CHECKING:``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.level == 0 and node.module else []
    if _type_checking(node):
        assert isinstance(node, ast.If)
        return [name for child in node.orelse for name in _imports(child)]
    return [name for child in ast.iter_child_nodes(node) for name in _imports(child)]


def _imported_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, over every package module."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for name in _imports(tree):
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_comes_with_the_runtime_install() -> None:
    runtime = _runtime_closure()
    distributions = packages_distributions()
    missing = []
    for module, where in sorted(_imported_modules().items()):
        if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
            continue
        owners = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        assert owners, f"{where} imports {module!r}, which no installed distribution provides"
        if not owners & runtime:
            missing.append(f"{module} ({', '.join(sorted(owners))}) imported by {where}")
    assert not missing, "not in [project] dependencies nor brought by them: " + "; ".join(missing)

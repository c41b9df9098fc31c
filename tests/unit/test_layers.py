"""The folders are the architecture: imports point one way, dashboards -> engine -> training -> streams.

``training`` may use ``streams`` (it reads the lake to retrain and writes models with its durable-write helper);
``streams`` never imports ``training`` or anything above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "streams", "training", "dashboards")
#: what each package may import from the others
ALLOWED = {
    "streams": set(),
    "training": {"streams"},
    "engine": {"streams", "training"},
    "dashboards": {"engine", "streams", "training"},
}
#: entry points that start the whole product (the CLI and the demo serve the dashboard)
ENTRY_POINTS = {"engine/cli.py": {"dashboards"}, "engine/demo.py": {"dashboards"}}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_upward(package: str) -> None:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        allowed = ALLOWED[package] | {package} | ENTRY_POINTS.get(rel, set())
        wrong = _imported_packages(path) - allowed
        if wrong:
            bad.append(f"{rel} imports {sorted(wrong)}")
    assert not bad, "; ".join(bad)

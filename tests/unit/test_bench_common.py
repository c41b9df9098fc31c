"""What every benchmark's JSON carries besides its rows."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from benchmarks.common import PACKAGES, write_results


def test_results_name_the_library_versions_they_were_measured_with(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.json", "demo", [], {"quick": True})
    machine = json.loads(path.read_text())["machine"]
    assert set(machine["packages"]) == set(PACKAGES)
    assert machine["packages"]["pandas"] == metadata.version("pandas")

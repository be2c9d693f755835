"""The package's shape: the import-linter contracts of pyproject.toml hold, and no two modules
import each other, directly or round a loop (TYPE_CHECKING and function-level imports count)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.support.layout import REPO, stage_package

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    return stage_package(tmp_path_factory.mktemp("layout"))


def test_import_linter_contracts_hold(staged):
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(staged)}
    result = subprocess.run(
        [str(lint), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=staged,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_no_import_cycles_between_modules(staged, monkeypatch):
    monkeypatch.syspath_prepend(str(staged))
    graph = grimp.build_graph("tandem", cache_dir=None)
    modules = sorted(graph.modules)
    cycles = {
        tuple(sorted({m, *chain}))
        for m in modules
        for imported in graph.find_modules_directly_imported_by(m)
        if (chain := graph.find_shortest_chain(importer=imported, imported=m)) and m != imported
    }
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sorted(cycles))

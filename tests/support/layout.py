"""The installed layout of the package, staged from the repository for tools that walk files.

pyproject.toml maps top-level folders into one package (`cluster/` is `tandem.cluster`). An
editable install resolves that mapping at import time, but grimp (import-linter's graph) walks the
package's folder on disk and would see only `tandem/`: stage a copy laid out as installed.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stage_package(dest: Path) -> Path:
    """Copy every Python module of the package into dest/<package path>; returns dest."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = setup["package-dir"]
    for package in setup["packages"]:
        parent = max((p for p in roots if package == p or package.startswith(p + ".")), key=len)
        source = REPO / roots[parent] / Path(*package[len(parent) :].split(".")[1:])
        target = dest / Path(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, target / module.name)
    return dest

"""The core knows nothing of napari or Qt: only ``napari_scan_classifier.plugin`` may import them.

Checked two ways: an AST walk of every module (catches imports inside functions too), and
import-linter's contract from pyproject.toml where import-linter is installed.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

import napari_scan_classifier

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

PACKAGE = Path(napari_scan_classifier.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
GUI_PACKAGES = frozenset(
    {"napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy"}
)


def _core_modules() -> list[Path]:
    return [
        p for p in sorted(PACKAGE.rglob("*.py")) if "plugin" not in p.relative_to(PACKAGE).parts
    ]


def _imported_top_levels(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_import_no_gui_package() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(_imported_top_levels(path) & GUI_PACKAGES)
        for path in _core_modules()
    }
    assert _core_modules(), "no core modules found: is the package path right?"
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text(
        "def show():\n    from qtpy.QtWidgets import QWidget\n    import napari.viewer\n"
    )
    assert _imported_top_levels(module) == {"qtpy", "napari"}


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_import_linter_contract() -> None:
    """pyproject's contract: every core module is listed and none reaches a GUI package."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = config["contracts"]
    listed = {name.rsplit(".", 1)[-1] for name in contract["source_modules"]}
    top_level = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    assert top_level - listed - {"__init__", "_tensorflow_isolation", "plugin"} == set()

    run = subprocess.run(
        ["lint-imports", "--config", str(PYPROJECT), "--no-cache"],
        capture_output=True,
        text=True,
        check=False,
        cwd=PYPROJECT.parent,
    )

    assert run.returncode == 0, run.stdout + run.stderr

"""The package map of docs/architecture.md holds: every module imports only its own layer or lower ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "protoseg"

#: Layer of each top-level module or sub-package, lowest first (docs/architecture.md, "Package map").
LAYERS: dict[str, int] = {
    "errors": 0,
    "classes": 0,
    "cam_norm": 0,
    "cancel": 0,
    "lazy": 0,
    "runtime": 0,
    "outputs": 0,
    "config_ranges": 0,  # imports nothing of protoseg: every layer checks its numbers with it
    "__init__": 0,
    "__main__": 7,
    "metrics": 1,
    "slide": 1,
    "cams": 1,
    "child": 1,
    "data": 2,
    "models": 2,
    "losses": 2,
    "bank": 3,
    "infer": 3,
    "export": 4,
    "corrections": 4,  # GeoJSON through export's one mask-to-QuPath path
    "config": 4,
    "config_compat": 4,
    "config_overrides": 4,
    "presets": 4,
    "train": 5,
    "cli": 6,
    "napari": 6,
}
#: Pairs that share a layer but must still not import each other (one direction only, or none).
FORBIDDEN: set[tuple[str, str]] = {
    ("infer", "bank"),
    ("bank", "infer"),
    ("data", "models"),
    ("models", "data"),
    ("losses", "models"),
    ("models", "losses"),
    ("losses", "data"),
    ("data", "losses"),
    ("export", "corrections"),
}


def _is_module(name: str) -> bool:
    return (SRC / f"{name}.py").is_file() or (SRC / name / "__init__.py").is_file()


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "protoseg" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "protoseg":  # `from protoseg import cams` names a module; `__version__` does not
                found.update(f"protoseg.{a.name}" for a in node.names if _is_module(a.name))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _owner(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_downward(path: Path) -> None:
    owner = _owner(path)
    assert owner in LAYERS, f"{owner} is not on the package map: add it to docs/architecture.md and LAYERS"
    for module in _imports(path):
        target = _top(module)
        if target is None or target == owner:
            continue
        assert target in LAYERS, f"{path.name} imports unknown package {module}"
        assert LAYERS[target] <= LAYERS[owner], (
            f"{owner} (layer {LAYERS[owner]}) imports {module} (layer {LAYERS[target]})"
        )
        assert (owner, target) not in FORBIDDEN, f"{owner} must not import {target} ({module})"
        if (owner, target) == ("cli", "napari"):  # only `protoseg demo` starts the viewer
            assert path.name == "demo.py", f"cli/{path.name} imports {module}; keep napari out of the CLI"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_qt_and_napari_only_in_the_napari_package(path: Path) -> None:
    if _owner(path) in ("napari",):
        return
    heavy = {m.split(".")[0] for m in _imports(path)} & {"napari", "qtpy", "PyQt6", "PyQt5", "PySide6", "magicgui"}
    assert not heavy, f"{path.relative_to(SRC)} imports {sorted(heavy)}; GUI code lives in protoseg.napari"

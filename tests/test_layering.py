"""The package boundaries: `app` and `training` import the shared `inference` core and never
each other; `inference` imports neither, and loads without torch (the serving image has none)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "app": {"training", "benchmarks"},
    "training": {"app", "benchmarks"},
    "inference": {"app", "training", "benchmarks"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every import in a file, lazy (in-function) imports included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_the_other_side(package: str) -> None:
    offences = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offences.items() if v} == {}


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The AST walk finds top-level, `from` and in-function imports alike."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom app.http import errors\n\ndef f():\n    import training.cli\n")
    assert imported_packages(sample) == {"os", "app", "training"}


def test_inference_and_app_import_without_torch() -> None:
    """With torch made unimportable, the whole shared core and the service still import."""
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
               for pkg in ("inference", "app") for p in sorted((ROOT / pkg).rglob("*.py"))]
    modules = [m.removesuffix(".__init__") for m in modules if not m.endswith("backends.torch")]
    code = ("import sys, importlib\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print('ok', len(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")

"""Layering, read from the source (issue 16: no module imports from a package above it).

Imports are collected with ``ast`` from every file, at any depth (the lazy imports inside
functions count as much as the ones at the top) and through ``importlib.import_module("...")``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "op4ksr"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports: ``from a.b import c`` gives ``a.b`` and ``a.b.c``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def offending_imports(package: str, above: tuple[str, ...]) -> list[str]:
    """``file: module`` for each import of a package in ``above`` from a module of ``package``."""
    folder = SRC.joinpath(*package.split(".")[1:])
    return [f"{path.relative_to(SRC.parent)}: {name}"
            for path in sorted(folder.rglob("*.py"))
            for name in sorted(imported_modules(path)) if _within(name, above)]


# Image reading and writing sits below the API and everything that drives it.
ABOVE_IO = ("op4ksr.api", "op4ksr.batch", "op4ksr.cli", "op4ksr.serve", "op4ksr.train", "op4ksr.eval")


def test_the_import_scanner_sees_lazy_relative_and_importlib_imports() -> None:
    run = imported_modules(SRC / "batch" / "run.py")
    assert "op4ksr.api" in run  # imported inside process_item only
    assert "op4ksr.batch.plan.FileResult" in run
    assert "op4ksr.io.images" in imported_modules(SRC / "io" / "__init__.py")  # importlib.import_module


def test_io_imports_nothing_above_it() -> None:
    assert offending_imports("op4ksr.io", ABOVE_IO) == []


def test_batch_sits_above_the_api_and_below_the_front_ends() -> None:
    assert offending_imports("op4ksr.batch", ("op4ksr.cli", "op4ksr.serve", "op4ksr.train", "op4ksr.eval")) == []


def test_io_images_loads_without_torch() -> None:
    """to_tensor/from_tensor import torch when called: reading and writing images does not need it."""
    code = "import sys, op4ksr.io.images; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# Assets and losses (issue 16, item 4): assets.py is a leaf (cache, download, registry) that the recipe
# modules register into; the perceptual networks live in op4ksr.nets, below both losses and metrics.
BELOW_EVAL = ("op4ksr.eval", "op4ksr.train", "op4ksr.cli", "op4ksr.serve", "op4ksr.api", "op4ksr.batch")


def test_assets_imports_no_eval_module_not_even_by_name() -> None:
    path = SRC / "assets.py"
    ours = sorted(n for n in imported_modules(path) if _within(n, ("op4ksr",)))
    assert [n for n in ours if not _within(n, ("op4ksr.utils",))] == []  # a leaf: op4ksr.utils only
    # No module path in any string either (a list handed to importlib elsewhere in the file).
    strings = [node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    assert [s for s in strings if _within(s.strip(), ("op4ksr.eval", "op4ksr.losses", "op4ksr.nets"))] == []


def test_losses_import_no_eval_module() -> None:
    assert offending_imports("op4ksr.losses", BELOW_EVAL) == []


def test_perceptual_networks_sit_below_losses_and_metrics() -> None:
    assert offending_imports("op4ksr.nets", ("op4ksr.losses", *BELOW_EVAL)) == []
    assert "op4ksr.nets.perceptual.LPIPSNet" in imported_modules(SRC / "losses" / "perceptual.py")
    assert "op4ksr.nets.perceptual.LPIPSNet" in imported_modules(SRC / "eval" / "metrics" / "deep.py")


def test_importing_assets_loads_no_recipe() -> None:
    code = ("import sys, op4ksr.assets as a; a.list_assets(); "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['op4ksr', 'eval'], ['op4ksr', 'nets'])))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

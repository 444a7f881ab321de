"""The sdk library never reaches into its CLI: no argparse and no `edgerec.sdk.cli` import (function-level
imports included), so the CLI can import the library without a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[2] / "sdk"
LIBRARY = sorted(p for p in SDK.rglob("*.py") if "cli" not in p.relative_to(SDK).parts)


def _imports(source: str, package: list[str]) -> set[str]:
    """Absolute names of every module ``source`` (a module of ``package``) imports, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _module_imports(path: Path) -> set[str]:
    return _imports(path.read_text("utf-8"), ["edgerec", "sdk", *path.relative_to(SDK).parent.parts])


def test_the_library_list_is_not_empty():
    assert len(LIBRARY) > 20 and SDK / "training" / "worker.py" in LIBRARY


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(SDK)))
def test_library_module_imports_neither_argparse_nor_the_cli(path):
    imported = _module_imports(path)
    assert "argparse" not in imported
    assert not [name for name in imported if name == "edgerec.sdk.cli" or name.startswith("edgerec.sdk.cli.")]


def test_relative_and_function_level_cli_imports_are_caught():
    source = "def f():\n    from ..cli.train import data_options\n    from .. import cli\n    import argparse\n"
    names = _imports(source, ["edgerec", "sdk", "training"])
    assert {"edgerec.sdk.cli.train", "edgerec.sdk.cli", "argparse"} <= names

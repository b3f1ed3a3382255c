"""Package structure: importing is cheap (MLflow and pandas load only where used) and imports go one way, from the
bundle helpers, command lines, deployment and node down to handlers and engines, and from those down to the
building blocks (networks, transforms, data, io, metrics, explain), never back up."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "medxgan_monai"

#: what each layer must never import: the building blocks know nothing of the Ignite adapters, and neither knows the
#: config helpers, command lines, deployment, the DICOM node or the training runner built on top of them
FORBIDDEN_IMPORTS = {
    **dict.fromkeys(
        ("networks", "transforms", "data", "io", "metrics", "explain"),
        {"handlers", "engines", "bundle", "cli", "deploy", "node", "training"},
    ),
    **dict.fromkeys(("handlers", "engines"), {"bundle", "cli", "deploy", "node", "training"}),
}

#: the MLflow pyfunc model is an ``mlflow.pyfunc.PythonModel`` subclass, so it needs MLflow as it is defined
MODULE_LEVEL_MLFLOW_ALLOWED = {"deploy/pyfunc.py"}


def _fresh_interpreter(code: str) -> dict:
    """Run ``code`` in a new interpreter from the repository root; it prints one JSON value, returned here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loaded_after(module: str) -> dict[str, bool]:
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        "print(json.dumps({name: name in sys.modules for name in ('mlflow', 'pandas', 'monai', 'torch')}))"
    )
    return _fresh_interpreter(code)


def _package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imported_names(tree: ast.AST) -> list[str]:
    """Absolute names of everything ``tree`` imports, anywhere in it (function-level imports count too)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the package uses absolute imports only"
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_level_statements(body: list[ast.stmt]):
    """Statements that run when the module is imported: all but function bodies (class bodies do run)."""
    for statement in body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield statement
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _module_level_statements(getattr(statement, field, []))


def test_importing_the_package_loads_neither_monai_nor_mlflow_nor_pandas():
    assert _loaded_after("medxgan_monai") == {"mlflow": False, "pandas": False, "monai": False, "torch": False}


def test_io_loads_neither_mlflow_nor_pandas():
    # the other subpackages build on MONAI, and ``import monai`` itself loads both (monai.utils.profiling imports
    # pandas, monai.handlers.mlflow_handler MLflow); what is ours to keep is checked by the next test
    loaded = _loaded_after("medxgan_monai.io")
    assert not loaded["mlflow"] and not loaded["pandas"], loaded


@pytest.mark.parametrize("path", _package_modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_mlflow_and_pandas_are_imported_where_used(path):
    if str(path.relative_to(PACKAGE)) in MODULE_LEVEL_MLFLOW_ALLOWED:
        pytest.skip("needs MLflow to define its class")
    tree = ast.parse(path.read_text(), filename=str(path))
    at_import = [
        name
        for statement in _module_level_statements(tree.body)
        if isinstance(statement, (ast.Import, ast.ImportFrom))
        for name in _imported_names(statement)
    ]
    heavy = [name for name in at_import if name.split(".")[0] in {"mlflow", "pandas"}]
    assert heavy == [], f"{path}: import {heavy} inside the function that uses it"


def test_configs_reach_subpackages_through_the_package():
    # the configs import only the package and then name subpackages as attributes or in ``_target_``
    code = """
import json
from monai.bundle import ConfigParser
parser = ConfigParser({
    "imports": ["$import medxgan_monai"],
    "run_name": "$medxgan_monai.bundle.run_name('check')",
    "settings": {"_target_": "medxgan_monai.data.LesionSettings", "max_lesions": 2},
})
print(json.dumps([parser.get_parsed_content("run_name"), parser.get_parsed_content("settings").max_lesions]))
"""
    name, max_lesions = _fresh_interpreter(code)
    assert name.startswith("check_") and max_lesions == 2


@pytest.mark.parametrize("path", _package_modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_go_one_way(path):
    layer = path.relative_to(PACKAGE).parts[0]
    forbidden = FORBIDDEN_IMPORTS.get(layer, set())
    imported_layers = {
        name.split(".")[1] for name in _imported_names(ast.parse(path.read_text())) if name.startswith("medxgan_monai.")
    }
    assert imported_layers.isdisjoint(forbidden), f"{path}: {layer} imports {sorted(imported_layers & forbidden)}"


def test_bundle_keeps_the_weight_helpers_the_configs_call():
    from medxgan_monai import bundle
    from medxgan_monai.io import weights

    assert bundle.save_state_dict is weights.save_state_dict
    assert bundle.load_weights is weights.load_weights

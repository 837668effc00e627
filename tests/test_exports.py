"""The public surface: what ``lifecycle`` and each adapter package export, and how."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import types
from pathlib import Path
from typing import cast

import pytest

import lifecycle

ROOT = Path(__file__).resolve().parent.parent
ADAPTER_PACKAGES = sorted(
    f"lifecycle_{path.parent.name}" for path in ROOT.glob("adapters/*/pyproject.toml")
)


def adapter_package(package: str) -> types.ModuleType:
    # An adapter kept out of the default environment (lifecycle-prefect) may be absent.
    module: types.ModuleType = pytest.importorskip(package, reason=f"{package} is not installed")
    return module


def isort_order(name: str) -> tuple[int, str]:
    """Constants, classes, then functions, each alphabetical (ruff's RUF022, isort's order)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def exported(module: types.ModuleType) -> list[str]:
    return list(cast("list[str]", module.__all__))


def test_all_is_sorted() -> None:
    names = exported(lifecycle)
    assert names == sorted(names, key=isort_order)


def test_all_is_the_import_block_that_type_checkers_read() -> None:
    # __all__ and the lazy imports come from the compiled block; a type checker reads its
    # source. Both must see the same names, from the same modules.
    tree = ast.parse(Path(lifecycle.__file__).read_text(encoding="utf-8"))
    written = {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
    }
    assert written == lifecycle._names()
    assert set(written) == set(exported(lifecycle))
    # ``X as X``: without the alias, strict type checkers do not see X as re-exported.
    assert all(
        alias.asname == alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
    )


def test_dir_lists_the_public_names_and_no_private_module() -> None:
    importlib.import_module("lifecycle._bus")  # importing a submodule binds it on the package
    public = {name for name in dir(lifecycle) if not name.startswith("_")}
    assert public == {*exported(lifecycle), "plugins"}
    assert not [name for name in dir(lifecycle) if name.startswith("_") and name[1] != "_"]


@pytest.mark.parametrize("name", exported(lifecycle))
def test_each_public_name_claims_the_public_module(name: str) -> None:
    # Documented, shown and pickled as lifecycle.X, never as the private module it lives in.
    value = getattr(lifecycle, name)
    assert not isinstance(value, types.ModuleType)
    if isinstance(value, (type, types.FunctionType)):
        assert value.__module__ == "lifecycle"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'EventBuss'"):
        _ = lifecycle.EventBuss


def test_exceptions_are_named_as_public_before_any_public_import() -> None:
    # An event names its error by type (error.type): that name must not depend on which
    # names the program happened to import first.
    code = (
        "import lifecycle._exceptions as e; "
        "print(e.ConfigError.__module__, e.RunTimeoutError.__module__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["lifecycle", "lifecycle"]


def test_every_public_exception_is_exported() -> None:
    # They are claimed as lifecycle.X before any lookup: each must be found there.
    from lifecycle import _exceptions

    public = {
        name
        for name, value in vars(_exceptions).items()
        if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
    }
    assert public <= set(exported(lifecycle))


def test_public_names_do_not_import_their_modules_before_use() -> None:
    code = (
        "import sys, lifecycle; print(sorted(m for m in sys.modules if m.startswith('lifecycle')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert ast.literal_eval(done.stdout) == ["lifecycle", "lifecycle._exceptions"]


# -- adapter packages ------------------------------------------------------------------


@pytest.mark.parametrize("package", ADAPTER_PACKAGES)
def test_an_adapter_package_lists_its_public_names_sorted(package: str) -> None:
    module = adapter_package(package)
    names = exported(module)
    assert names == sorted(names, key=isort_order)
    assert all(hasattr(module, name) for name in names)


@pytest.mark.parametrize("package", ADAPTER_PACKAGES)
def test_an_adapter_package_exports_every_name_it_defines(package: str) -> None:
    module = adapter_package(package)
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and isinstance(value, (type, types.FunctionType))
        and (value.__module__ == package or value.__module__.startswith(f"{package}."))
    }
    assert defined <= set(exported(module))


@pytest.mark.parametrize("package", ADAPTER_PACKAGES)
def test_an_adapter_package_names_no_private_module(package: str) -> None:
    # Its exports claim the package (lifecycle.plugins.claim_exports), and its submodules
    # stay private: lifecycle_x._impl.Name would break the day _impl moves.
    module = adapter_package(package)
    for name in exported(module):
        value = getattr(module, name)
        if isinstance(value, (type, types.FunctionType)):
            assert not value.__module__.startswith(f"{package}."), name
    submodules = [
        name
        for name, value in vars(module).items()
        if isinstance(value, types.ModuleType) and value.__name__.startswith(f"{package}.")
    ]
    assert all(name.startswith("_") for name in submodules), submodules


def _runtime_imports(tree: ast.Module) -> set[str]:
    """The ``lifecycle`` modules a module imports when it runs: at its top or in a function.

    Imports under ``if TYPE_CHECKING:`` are left out: they never run.
    """
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:  # from . import _logging
                    found.update(alias.name for alias in node.names)
                else:
                    found.add(node.module)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return found


def test_the_core_modules_import_each_other_without_a_cycle() -> None:
    # A cycle works only as long as the modules load in one order; a function-level import
    # hides it until the day someone moves that import to the top of its file.
    package = Path(lifecycle.__file__).parent
    graph = {
        path.stem: _runtime_imports(ast.parse(path.read_text(encoding="utf-8")))
        for path in package.glob("*.py")
    }
    assert "_runner" in graph["_environment"]  # the walk sees function-level imports
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported in graph:
                walk(imported, [*path, imported])

    for module in sorted(graph):
        walk(module, [module])
    assert cycles == []

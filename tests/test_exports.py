from __future__ import annotations

import ast
from pathlib import Path

import lifecycle


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(lifecycle) if not name.startswith("_")}
    assert set(lifecycle.__all__) == public - {"plugins"}  # a public module of its own


def test_public_objects_claim_the_public_module() -> None:
    # Types are documented as lifecycle.X, not as the private module they live in.
    for name in lifecycle.__all__:
        obj = getattr(lifecycle, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("lifecycle"), name


def test_each_public_name_is_imported_from_its_module_on_first_use() -> None:
    # __init__ imports lazily (PEP 562): the TYPE_CHECKING imports, the name-to-module map
    # and __all__ must agree, or a name is missing at run time or to type checkers.
    tree = ast.parse(Path(lifecycle.__file__).read_text(encoding="utf-8"))
    typed = {
        alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 1
        for alias in node.names
    }
    assert typed == lifecycle._MODULES
    assert set(typed) == set(lifecycle.__all__)


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

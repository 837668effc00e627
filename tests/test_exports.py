from __future__ import annotations

import ast
from pathlib import Path

import lifecycle


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(lifecycle) if not name.startswith("_")}
    assert set(lifecycle.__all__) == public


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
        alias.name: f"_{node.module.lstrip('_')}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 1
        for alias in node.names
    }
    assert typed == lifecycle._MODULES
    assert set(typed) == set(lifecycle.__all__)

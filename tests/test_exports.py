from __future__ import annotations

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

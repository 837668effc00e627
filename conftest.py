"""Settings for every test of the workspace, the core's and the adapters' alike."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_STATE_HOME = "XDG_STATE_HOME"


def pytest_configure(config: pytest.Config) -> None:
    # lifecycle-nats keeps its spool and its handled ids in the user's state directory. A test
    # that kills its broker while a wrapper exits leaves spooled events there, which the next
    # process would send first, into another test's stream: each session gets its own (child
    # processes inherit it), and the user's own directory is never touched.
    config.stash[_state_key] = (os.environ.get(_STATE_HOME), tempfile.mkdtemp(prefix="lc-state-"))
    os.environ[_STATE_HOME] = config.stash[_state_key][1]
    # lifecycle finds a configuration in the user's and the system's configuration directories
    # too: the tests (and their child processes) must not find the machine's own.
    config.stash[_config_key] = {name: os.environ.get(name) for name in _CONFIG_VARIABLES}
    empty = tempfile.mkdtemp(prefix="lc-config-")
    os.environ.pop("LIFECYCLE_CONFIG", None)
    os.environ["XDG_CONFIG_HOME"] = os.environ["XDG_CONFIG_DIRS"] = empty


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ["XDG_CONFIG_HOME"], ignore_errors=True)
    for name, value in config.stash[_config_key].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    previous, directory = config.stash[_state_key]
    shutil.rmtree(directory, ignore_errors=True)
    if previous is None:
        os.environ.pop(_STATE_HOME, None)
    else:
        os.environ[_STATE_HOME] = previous


_state_key = pytest.StashKey[tuple[str | None, str]]()
_CONFIG_VARIABLES = ("LIFECYCLE_CONFIG", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS")
_config_key = pytest.StashKey[dict[str, str | None]]()

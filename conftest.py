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


def pytest_unconfigure(config: pytest.Config) -> None:
    previous, directory = config.stash[_state_key]
    shutil.rmtree(directory, ignore_errors=True)
    if previous is None:
        os.environ.pop(_STATE_HOME, None)
    else:
        os.environ[_STATE_HOME] = previous


_state_key = pytest.StashKey[tuple[str | None, str]]()

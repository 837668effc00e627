"""Console lines show at most a bounded part of one value; the event keeps everything."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import structlog

from lifecycle._console import TRACEBACK_LIMIT, VALUE_LIMIT, log_to_stderr, render, shorten

if TYPE_CHECKING:
    from collections.abc import Iterator


def test_a_long_text_is_cut_in_the_middle_to_the_limit() -> None:
    text = "head" + "x" * 900_000 + "tail"
    short = shorten(text)
    assert len(short) == VALUE_LIMIT
    assert short.startswith("head")
    assert short.endswith("tail")
    marker = re.search(r"\.\.\.\[(\d+) characters cut\]\.\.\.", short)
    assert marker is not None
    assert int(marker[1]) == len(text) - (len(short) - len(marker[0]))  # says what it cut
    assert shorten(short) == short


def test_a_short_text_is_left_alone() -> None:
    assert shorten("x" * VALUE_LIMIT) == "x" * VALUE_LIMIT


def test_a_console_line_with_a_huge_attribute_is_bounded() -> None:
    line = render("info", "environment.exited", {"attributes": {"blob": "x" * 900_000}, "n": 1})
    assert len(line) < VALUE_LIMIT + 200
    assert "characters cut]..." in line
    assert line.endswith("n=1")


@pytest.fixture
def configured() -> Iterator[None]:
    structlog.reset_defaults()
    log_to_stderr()
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("configured")
def test_the_librarys_own_lines_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger("lifecycle").warning("w", text="y" * 900_000, items=list(range(10**5)))
    (line,) = capsys.readouterr().err.splitlines()
    assert len(line) < 2 * VALUE_LIMIT + 200
    assert line.count("characters cut]...") == 2


@pytest.mark.usefixtures("configured")
def test_a_huge_traceback_keeps_its_head_and_its_end(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise ValueError("z" * 900_000 + " the end")
    except ValueError:
        structlog.get_logger("lifecycle").exception("failed")
    err = capsys.readouterr().err
    assert len(err) < TRACEBACK_LIMIT + 200
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("the end")


def test_a_run_with_huge_arguments_writes_bounded_lines() -> None:
    # The command line is an attribute of both events: 9 arguments of 100 KB (each argument
    # must stay under the kernel's 128 KB) made two 900 KB lines.
    arguments = ["a" * 100_000] * 9
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "run", "--", "true", *arguments],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert len(lines) == 2
    assert "environment.starting" in lines[0]
    assert "environment.exited" in lines[1]
    assert all(len(line) < VALUE_LIMIT + 400 for line in lines)
    assert all("characters cut]..." in line for line in lines)

"""What ``lifecycle``'s command line means, for both of its readers (``_cli``, ``_cli_parser``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["STATUS_WRAPPER_FAILED", "limit", "path", "seconds"]

STATUS_WRAPPER_FAILED = 125
"""``lifecycle run`` could not run the command at all (options, configuration, abort)."""


def seconds(text: str) -> float:
    """A number of seconds >= 0 given on the command line.

    Raises:
        ValueError: with the message argparse shows.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def limit(text: str) -> float:
    """A time limit > 0 given on the command line (raises ``ValueError``, as :func:`seconds`)."""
    value = seconds(text)
    if value == 0:
        # 0 meaning "no limit" would turn a typo into a job that may run forever.
        raise ValueError("must be > 0 seconds (leave --timeout out for no limit), got '0'")
    return value


def path(text: str) -> Path:
    from pathlib import Path  # only when a path is given

    return Path(text)

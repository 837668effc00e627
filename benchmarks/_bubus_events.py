"""bubus event models; pydantic wants them at module level (Python 3.11+ only)."""

from __future__ import annotations

from bubus import BaseEvent


class BenchEvent(BaseEvent):  # type: ignore[misc]  # bubus ships no type information
    """The event every bubus case dispatches."""

"""The package's version, for the instrumentation scope."""

from __future__ import annotations

VERSION = "0.1.0"

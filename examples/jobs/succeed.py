#!/usr/bin/env python3
"""A job that succeeds: a few lines of output, exit status 0.

uv run lifecycle run --config examples/lifecycle.toml -- python examples/jobs/succeed.py
"""

import sys

for step in ("download", "transform", "upload"):
    print(f"{step}: ok", flush=True)
sys.exit(0)

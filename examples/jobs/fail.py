#!/usr/bin/env python3
"""A job that fails: some output, an error on stderr, exit status 2.

The last lines of its output travel on the ``environment.exited`` event, so the log line
and the webhook notification show what went wrong. ``lifecycle run`` exits 2 as well.

    uv run lifecycle run --config examples/lifecycle.toml -- python examples/jobs/fail.py
"""

import sys

print("download: ok", flush=True)
print("transform: 3 of 1000 rows are malformed", flush=True)
print("error: refusing to upload a partial batch", file=sys.stderr, flush=True)
sys.exit(2)

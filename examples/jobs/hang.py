#!/usr/bin/env python3
"""A job that hangs: it never finishes on its own.

Give it a time limit (the run ends ``timeout``, status 124), or stop it with Ctrl-C or
``kill -TERM`` on the wrapper (the signal is forwarded; the run ends ``terminated``)::

    uv run lifecycle run --timeout 3 --config examples/lifecycle.toml -- python examples/jobs/hang.py
"""

import time

print("waiting for a lock that never comes...", flush=True)
while True:
    time.sleep(3600)

"""The lifecycle-bus dispatch benchmark (issue 5).

Run it with ``uv run --group bench python -m benchmarks`` (``--quick`` for a smoke run).
"""

"""Benchmark harness: ``python -m bench.run [--quick] [--only NAME,...] [--out bench/out]``.

Every speed claim is a ratio against a named baseline measured in the same run (medians of
several timed runs after an excluded warm-up); the report goes to ``<out>/report.md`` and
``<out>/report.json``. See :mod:`bench.run`.
"""

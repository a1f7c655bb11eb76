"""Benchmarks: this project side by side with DBOS Transact and plain Celery.

Run ``python -m bench`` (or ``python -m bench --quick``); see ``docs/benchmarks.md``.
"""

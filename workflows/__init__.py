"""Durable workflows for Django and Celery.

Public names: :func:`workflow` and the errors users raise or catch.
"""

from workflows.exceptions import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
)
from workflows.registry import workflow

__all__ = [
    "NonDeterminismError",
    "NonRetriableError",
    "RetryAfterError",
    "StepError",
    "workflow",
]

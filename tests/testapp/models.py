"""A ledger that step bodies write to in their own transaction, to count executions."""

import os
import time

from django.db import models


class LedgerEntry(models.Model):
    """One execution of one step body."""

    run_id = models.CharField(max_length=64)
    step = models.CharField(max_length=255)
    attempt = models.IntegerField(default=0)
    pid = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["run_id", "step"])]


class EmissionLog(models.Model):
    """One delivery of an event to its subscribers, written in the emitting transaction.

    Recorded only while ``WORKFLOWS_TEST_EMISSION_LOG=1`` (the chaos and concurrency
    tests): an event delivered twice would leave two rows here.
    """

    event_id = models.UUIDField()
    name = models.CharField(max_length=255)
    ts = models.BigIntegerField()
    delivered_ms = models.BigIntegerField()
    pid = models.IntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["event_id"])]


class Span(models.Model):
    """One execution of a step body, from start to end: to find overlapping executions.

    Written by the flow-control test workflows (``tests.flow_workflows``) in their own
    committed transaction, once the body is done.
    """

    run_id = models.CharField(max_length=64)
    label = models.CharField(max_length=255)
    started = models.FloatField(help_text="time.time() when the body began")
    ended = models.FloatField(help_text="time.time() when it ended")
    pid = models.IntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["label"])]

    @classmethod
    def record(cls, run_id: str, label: str, started: float) -> "Span":
        """Store one execution that began at ``started`` and ends now."""
        return cls.objects.create(
            run_id=run_id, label=label, started=started, ended=time.time(), pid=os.getpid()
        )


def most_at_once(spans) -> int:
    """The largest number of ``spans`` (with ``started``/``ended``) open at one moment."""
    edges = sorted(
        [(s.started, 1) for s in spans] + [(s.ended, -1) for s in spans],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most

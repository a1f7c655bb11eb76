"""A ledger that step bodies write to in their own transaction, to count executions."""

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

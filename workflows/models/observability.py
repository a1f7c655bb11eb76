"""Counters of the engine's work, kept in the database for ``GET /metrics``.

Every process adds what it counted (:mod:`workflows.tally`) to these rows, so one
scrape of any web process sees the work of every worker on every host, and the
counts never go down: purging runs leaves them alone.
"""

from django.db import models


class MetricTally(models.Model):
    """The running total of one counter series (or one histogram bucket)."""

    name = models.CharField(max_length=100)
    labels = models.CharField(
        max_length=600, blank=True, default="", help_text="The series' labels, as sorted JSON."
    )
    value = models.FloatField(default=0.0)

    class Meta:
        # Its admin page is the dashboard (workflows.admin.dashboard).
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
        constraints = [
            models.UniqueConstraint(fields=["name", "labels"], name="workflows_tally_series"),
        ]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} = {self.value}"

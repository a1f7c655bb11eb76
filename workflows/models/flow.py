"""The state flow control keeps besides the runs: the throttle of each key."""

from django.db import models


class ThrottleState(models.Model):
    """The throttle of one (workflow, key): when its next first start may come.

    ``next_at`` is the theoretical arrival time of the generic cell rate algorithm:
    each first start moves it one interval (``period / limit``) on from the later of
    itself and now; a start is allowed while ``next_at`` is at most ``burst`` intervals
    ahead of now.
    """

    key = models.CharField(max_length=300, primary_key=True)
    next_at = models.DateTimeField()

    class Meta:
        verbose_name = "throttle"

    def __str__(self) -> str:
        return f"{self.key}: next start at {self.next_at:%Y-%m-%d %H:%M:%S.%f}"

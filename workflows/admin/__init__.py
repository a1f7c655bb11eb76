"""The console for runs, steps and events, as Django admin pages.

Importing this package (Django's admin autodiscovery does) registers the pages:
:mod:`.runs` (runs), :mod:`.steps` (step memos) and :mod:`.events`, which replaces the
event bus's plain event page with one that shows what each event triggered and can
replay it; :mod:`.schedules` (schedules, with pause, resume and trigger); :mod:`.pauses`
(every registered workflow, paused or not, with pause and resume); :mod:`.dashboard`
(runs by status, backlog, failure rates, slowest steps).
:mod:`.console` holds the helpers they share.
"""

from workflows.admin import dashboard, events, pauses, runs, schedules, steps

__all__ = ["dashboard", "events", "pauses", "runs", "schedules", "steps"]

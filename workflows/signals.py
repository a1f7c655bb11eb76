"""Django signals of a run's life, for code of the project that wants to hear of it.

Each is sent once per event of the run's life, after the transaction that recorded it
commits, with the workflow id as ``sender`` and the run as ``run``. A receiver that
raises is logged (logger ``workflows.signals``) and never breaks the run. Branch runs
of ``step.parallel`` send no ``run_started``/``run_finished`` (their parent does).

- ``run_started(sender, run)``: the run's first execution began;
- ``run_finished(sender, run)``: it completed, failed or was cancelled (``run.status``);
- ``step_finished(sender, run, step)``: one execution of a step ended and its memo
  (``step``, a :class:`~workflows.models.StepResult`) was recorded: a try of
  ``step.run`` (``completed``, ``failed`` or ``retrying``), a sleep, wait or invoke
  recorded (``sleeping``, ``waiting``), an event sent.
"""

from django.dispatch import Signal

#: A run's first execution began. Kwargs: ``run``.
run_started = Signal()
#: A run completed, failed or was cancelled. Kwargs: ``run``.
run_finished = Signal()
#: A step's execution ended and its memo was recorded. Kwargs: ``run``, ``step``.
step_finished = Signal()

__all__ = ["run_finished", "run_started", "step_finished"]

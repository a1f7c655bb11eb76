"""Memo keys: a stable key for every step call of a run.

The key of a step is the SHA-1 hex of its ``step_id`` the first time that id is used in
a run, and of ``f"{step_id}:{n}"`` for its n-th repeat (n = 1, 2, …), so steps in a loop
each keep their own memo.
"""

import hashlib

from eventbus import validation
from workflows.exceptions import StepUsageError

MAX_STEP_ID_LENGTH = 255


def key_for(step_id: str, repeat: int = 0) -> str:
    """The memo key of the ``repeat``-th use (0 = first) of ``step_id`` in a run."""
    text = step_id if repeat == 0 else f"{step_id}:{repeat}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def patch_key(patch_id: str) -> str:
    """The memo key of the marker of patch ``patch_id`` (``ctx.patched``).

    No step id can have it: the hashed text holds a NUL, which step ids may not.
    """
    return hashlib.sha1(f"patch\x00{patch_id}".encode()).hexdigest()


def check_step_id(step_id: object, call: str) -> str:
    """Return ``step_id`` if it is usable, else raise :class:`StepUsageError`."""
    if not isinstance(step_id, str):
        raise StepUsageError(
            f"step.{call}: the step id must be a string (the first argument), "
            f"got {type(step_id).__name__}"
        )
    if not step_id.strip():
        raise StepUsageError(f"step.{call}: the step id must be a non-empty string")
    if len(step_id) > MAX_STEP_ID_LENGTH:
        raise StepUsageError(
            f"step.{call}: the step id is {len(step_id)} characters long; "
            f"the limit is {MAX_STEP_ID_LENGTH}"
        )
    if "\x00" in step_id:
        raise StepUsageError(f"step.{call}: the step id must not contain NUL characters")
    problem = validation.invisible_problem(step_id)
    if problem:
        raise StepUsageError(f"step.{call}: the step id {problem}")
    return step_id


class Counter:
    """Counts the uses of each step id in one execution, to key repeats."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self.position = 0

    def next(self, step_id: str) -> tuple[str, int]:
        """The memo key of this use of ``step_id`` and its position in the run."""
        repeat = self._seen.get(step_id, 0)
        self._seen[step_id] = repeat + 1
        return key_for(step_id, repeat), self.take()

    def take(self) -> int:
        """The next position in the run (for a call that is not keyed by a step id)."""
        position = self.position
        self.position += 1
        return position

    def resume_after(self, position: int) -> None:
        """Go on after a recorded memo at ``position``: new memos are placed after it.

        The same code meets its memos at the positions it recorded them; code that
        changed (a step removed before this one) keeps placing new memos after them.
        """
        self.position = max(self.position, position + 1)

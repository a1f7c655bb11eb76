"""``manage.py run_dispatcher``: run the dispatcher as its own process."""

import signal
from typing import Any

from django.core.management.base import BaseCommand

from workflows import dispatcher, tally


class Command(BaseCommand):
    """Emit due events and ring for due runs until stopped (Ctrl-C or SIGTERM)."""

    help = (
        "Run the workflow dispatcher in the foreground: it emits deferred events and wakes "
        "sleeping, retrying and stalled runs when they are due. Safe to run several."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Do one pass and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            result = dispatcher.tick()
            self.stdout.write(f"emitted {result['emitted']} event(s), rang {result['rung']} run(s)")
            return
        tally.start_flusher()  # the runs it cancels (timeouts) are counted
        thread = dispatcher.DispatcherThread()
        signal.signal(signal.SIGTERM, lambda *_: thread.stop())
        self.stdout.write("Dispatcher running; Ctrl-C to stop.")
        thread.start()
        try:
            while thread.is_alive():
                thread.join(timeout=0.5)
        except KeyboardInterrupt:
            thread.stop()
            thread.join(timeout=10)
        self.stdout.write("Dispatcher stopped.")

"""kombu's filesystem transport, with messages that appear whole.

kombu writes a message into its final file name and only then serialises it, while a
consumer moves and reads any file with that name without waiting for the writer's
lock: a consumer that is quick enough reads an empty or partial file, and the worker
stops with "Unrecoverable error: JSONDecodeError". The wider the message, the wider the
window. Here a message is written under a name consumers skip and renamed into place
(an atomic rename in one folder), so it is read whole or not at all.
"""

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """The filesystem channel, writing each message atomically."""

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Consumers take names "<anything>.<queue>.msg"; this one ends in ".part".
        partial = os.path.join(self.data_folder_out, f"{name}.part")
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """``filesystem://`` with :class:`Channel`."""

    Channel = Channel

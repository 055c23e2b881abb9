"""Moving a process's stdio bytes on the host: used by the shim and by exec relays."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from runv.api.errors import RunvError


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def start_pump(fd: int, send: Callable[[bytes], None], on_hangup: Callable[[], None] = lambda: None) -> None:
    """Copies ``fd`` to ``send`` on a daemon thread until end-of-file (then sends ``b""``).
    A terminal whose other side went away reads EIO: that is a hang-up, not an EOF."""

    def pump() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    on_hangup()
                    return
                data = b""
            try:
                send(data)
            except (OSError, RunvError):  # the receiving side is gone
                return
            if not data:
                return

    threading.Thread(target=pump, name=f"pump-{fd}", daemon=True).start()

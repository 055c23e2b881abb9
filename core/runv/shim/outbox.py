"""A bounded queue of bytes for one slow consumer (an exec client's socket, the container's
stdout), drained by a thread of its own so that the agent's reader never waits on a consumer."""

from __future__ import annotations

import collections
import threading
from typing import Callable

from runv.log import logger

OUTBOX_LIMIT = 16 << 20  # bytes of one stream held for a slow consumer (or before an exec's reply)
OUTBOX_STALL = 2.0  # seconds the agent reader waits for room in a full outbox, once per overflow


class Outbox:
    """Bytes for one slow consumer (an exec client's socket, the container's stdout),
    written by a thread of its own so that the agent reader never blocks on a consumer.

    At most ``limit`` bytes are held. When full, ``put`` waits up to ``stall`` seconds once;
    if the consumer is still stuck, output is dropped (counted and logged) until it has
    drained to half, so memory stays bounded and control frames wait at most ``stall``.
    ``control`` items (an exit status) are never dropped. A ``held`` outbox writes nothing
    until :meth:`release` (an exec's reply line must go first).
    """

    def __init__(self, write: Callable[[bytes], None], name: str, *, held: bool = False,
                 limit: int = OUTBOX_LIMIT, stall: float = OUTBOX_STALL) -> None:
        self.write, self.name, self.held, self.limit, self.stall = write, name, held, limit, stall
        self.items: collections.deque = collections.deque()
        self.size = 0
        self.dropped = 0
        self.overflowing = False
        self.broken = False
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=f"outbox-{name}", daemon=True)
        self.thread.start()

    def put(self, data: bytes, control: bool = False) -> None:
        with self.cond:
            if self.broken or self.closed:
                return
            if not control:
                if self.overflowing and self.size > self.limit // 2:
                    self._drop(len(data))
                    return
                self.overflowing = False
                if self.size + len(data) > self.limit and not self.held:
                    self.cond.wait_for(lambda: self.size + len(data) <= self.limit or self.broken, self.stall)
                if self.size + len(data) > self.limit:
                    self.overflowing = True
                    self._drop(len(data))
                    return
            self.items.append(data)
            self.size += len(data)
            self.cond.notify_all()

    def _drop(self, count: int) -> None:
        if not self.dropped:
            logger.warning("%s: consumer too slow, dropping output beyond %d bytes held", self.name, self.limit)
        self.dropped += count

    def release(self) -> None:
        with self.cond:
            self.held = False
            self.cond.notify_all()

    def finish(self, timeout: float = 10.0) -> None:
        """Writes what is held (up to ``timeout``), then stops the thread."""
        with self.cond:
            self.held = False
            self.closed = True
            self.cond.notify_all()
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: (self.items and not self.held) or (self.closed and not self.items))
                if not self.items:
                    return
                data = self.items.popleft()
            try:
                if not self.broken:
                    self.write(data)
            except OSError:
                self.broken = True  # the consumer is gone: drop the rest, as a closed pipe would
            with self.cond:
                self.size -= len(data)
                if self.broken:
                    self.items.clear()
                    self.size = 0
                self.cond.notify_all()

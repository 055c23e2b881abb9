"""The shim's end of ``runv exec``: starts an exec'd process in the guest and relays its
streams, signals and window sizes over the exec client's connection until it exits
(the client's end is :mod:`runv.verbs.exec`)."""

from __future__ import annotations

import collections
import itertools
import json
import signal
import socket
import threading
import traceback
from typing import TYPE_CHECKING, Callable

from runv.agent.protocol import CTRL, FrameReader, encode_ctrl, encode_data
from runv.api.errors import RunvError
from runv.log import logger
from runv.vm.agentclient import AgentError

if TYPE_CHECKING:
    from runv.shim.server import Shim

CHANNELS_PER_EXEC = 16  # exec N uses agent channels 16N+1..16N+3, clear of the container's 1..3
STDOUT, STDERR = 1, 2  # the relay's stream numbers towards the exec client
OUTBOX_LIMIT = 16 << 20  # bytes of one stream held for a slow consumer (or before an exec's reply)
OUTBOX_STALL = 2.0  # seconds the agent reader waits for room in a full outbox, once per overflow
SIGNAL_TIMEOUT = 5.0  # seconds the guest has to acknowledge a signal before it is reported
_numbers = itertools.count(1)


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


def serve_exec(shim: Shim, conn: socket.socket, request: dict) -> None:
    """Serves one exec request on ``conn`` until the process exits."""
    from runv.oci.config import process_to_exec

    try:
        container = shim.member(request.get("container"))  # a pod member's process, or the shim's own container's
        process = process_to_exec(container.spec.process if container.spec else None, request)
    except RunvError as exc:
        return _refuse(conn, str(exc))
    except Exception as exc:  # noqa: BLE001 - a malformed request: the client must get an answer
        logger.error("shim: exec request: %s", traceback.format_exc())
        return _refuse(conn, f"internal error in the shim: {exc}")
    number = next(_numbers)
    name = f"init:{number}" if request.get("init") and container is not shim.container else f"exec-{number}"
    base = CHANNELS_PER_EXEC * number
    streams = {"stdin": base + 1, "stdout": base + 2, "stderr": base + 3}
    exited = threading.Event()
    outbox = Outbox(conn.sendall, name, held=True)  # output that arrives before the reply line waits

    def on_exit(message: dict) -> None:
        outbox.put(encode_ctrl({k: v for k, v in message.items() if k in ("code", "signal")}), control=True)
        exited.set()

    shim.routes[streams["stdout"]] = lambda data: outbox.put(encode_data(STDOUT, data))
    shim.routes[streams["stderr"]] = lambda data: outbox.put(encode_data(STDERR, data))
    shim.exits[name] = on_exit
    try:
        pid = shim.hooks.exec(container=container, process=process, agent=shim.agent, name=name, streams=streams)
    except RunvError as exc:
        forget(shim, name, streams)
        outbox.finish(0)
        _refuse(conn, str(exc))
        return
    try:
        conn.sendall(json.dumps({"ok": True, "pid": pid}).encode() + b"\n")
    except OSError:
        pass  # the relay is gone; the process still runs to its end
    outbox.release()
    relay_input(shim, conn, name, streams, process.terminal, exited)
    while not exited.wait(1.0):
        if shim.agent.closed:  # the guest went away (or was killed): no exit will come
            break
    forget(shim, name, streams)
    outbox.finish()


def _refuse(conn: socket.socket, error: str) -> None:
    try:
        conn.sendall(json.dumps({"error": error}).encode() + b"\n")
    except OSError:
        pass  # the client went away


def relay_input(shim: Shim, conn: socket.socket, name: str, streams: dict, terminal: bool, exited: threading.Event) -> None:
    """Passes the client's stdin, signals and window sizes to the process; when the client
    goes away first, the process gets EOF (and a hang-up on a terminal)."""
    reader = FrameReader()
    try:
        while not exited.is_set() and (data := conn.recv(65536)):
            for kind, _channel, payload in reader.feed(data):
                if kind == CTRL and payload.get("op") == "signal":
                    try:
                        shim.agent.call("signal", timeout=SIGNAL_TIMEOUT, proc=name, signal=int(payload["signal"]),
                                        all=bool(payload.get("all")))
                    except AgentError as exc:
                        logger.warning("exec %s: signal not delivered: %s", name, exc)
                elif kind == CTRL and payload.get("op") == "winsize":
                    shim.agent.call("winsize", timeout=SIGNAL_TIMEOUT, proc=name, rows=payload["size"][0], cols=payload["size"][1])
                elif kind != CTRL:
                    shim.agent.send_data(streams["stdin"], payload)
        if not exited.is_set():
            shim.agent.send_data(streams["stdin"], b"")
            if terminal:
                shim.agent.call("signal", timeout=SIGNAL_TIMEOUT, proc=name, signal=signal.SIGHUP)
    except (RunvError, OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        logger.debug("exec %s: %s", name, exc)


def forget(shim: Shim, name: str, streams: dict) -> None:
    shim.exits.pop(name, None)
    shim.routes.pop(streams["stdout"], None)
    shim.routes.pop(streams["stderr"], None)

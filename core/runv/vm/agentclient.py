"""The host side of the agent channel: requests with replies, events, and stream data.

Every byte from the guest is hostile (docs/security.md): each control message is checked
against :func:`check_message` (and each reply against its operation's schema) before
anything else reads it. A frame that breaks the protocol, or any exception a handler
raises on guest data, closes the channel with a logged reason (the container then stops);
nothing from the guest can kill the reader thread or reach the caller unescaped.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from runv.agent.protocol import CTRL, FrameReader, ProtocolError, encode_ctrl, encode_data
from runv.api.errors import AgentError
from runv.api.sockets import connect_unix
from runv.log import logger

MAX_TEXT = 4096  # characters of a guest string kept (error messages, command lines)
MAX_NAME = 64  # characters of a process name the host chose
MAX_CONTAINER = 1024  # characters of a container id (one the host chose, or a pod member's)
MAX_PID = 1 << 22  # Linux's PID_MAX_LIMIT
MAX_PROCESSES = 65536  # entries of a `ps` reply


def printable(text: object, limit: int = MAX_TEXT) -> str:
    """A guest string made safe for a terminal or a log line: control characters (newlines,
    escapes) and other non-printables written as Python escapes, cut at ``limit``."""
    text = str(text)[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class GuestProtocolError(ProtocolError):
    """A well-formed frame whose content breaks the agent protocol's schema."""


def _int(message: dict, key: str, low: int, high: int) -> int:
    value = message.get(key)
    if type(value) is not int or not low <= value <= high:
        raise GuestProtocolError(f"{key!r} must be an integer in {low}..{high}, not {printable(repr(value), 80)}")
    return value


def _str(message: dict, key: str, limit: int) -> str:
    value = message.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise GuestProtocolError(f"{key!r} must be a string of at most {limit} characters")
    return value


def check_message(message: dict) -> None:
    """Raises GuestProtocolError unless ``message`` (a decoded control frame) is a reply
    (``id`` an integer; ``error`` a string, or ``ok`` true) or a known event with the
    right fields: ``exit`` has ``proc`` and exactly one of ``code`` 0-255 or ``signal`` 1-64,
    ``oom`` a ``container``."""
    if "event" in message:
        event = message["event"]
        if event == "ready":
            return
        if event == "oom":
            _str(message, "container", MAX_CONTAINER)
            return
        if event != "exit":
            raise GuestProtocolError(f"unknown event {printable(repr(event), 80)}")
        _str(message, "proc", MAX_NAME)
        if ("code" in message) == ("signal" in message):
            raise GuestProtocolError("an exit event needs exactly one of 'code' and 'signal'")
        if "code" in message:
            _int(message, "code", 0, 255)
        else:
            _int(message, "signal", 1, 64)
        return
    _int(message, "id", 1, 1 << 62)
    if "error" in message:
        _str(message, "error", 1 << 16)
    elif message.get("ok") is not True:
        raise GuestProtocolError("a reply needs 'ok': true or an 'error' string")


def check_reply(op: str, reply: dict) -> dict:
    """The results of ``op`` checked (the ops whose results the host reads)."""
    if op == "exec":
        _int(reply, "pid", 1, MAX_PID)
    elif op == "ps":
        processes = reply.get("processes")
        if not isinstance(processes, list) or len(processes) > MAX_PROCESSES:
            raise GuestProtocolError("'processes' must be a list")
        clean = []
        for entry in processes:
            if not isinstance(entry, dict):
                raise GuestProtocolError("each process must be an object")
            clean.append({"pid": _int(entry, "pid", 1, MAX_PID), "cmd": printable(_str(entry, "cmd", 1 << 16))})
        reply = {**reply, "processes": clean}
    elif op == "stats":
        for key, value in reply.items():
            if key not in ("id", "ok") and not isinstance(value, (int, float, dict)):
                raise GuestProtocolError(f"stats field {printable(key, 80)!r} has the wrong type")
    return reply


class AgentClient:
    """One connection to the guest agent, shared by every user in the shim (thread-safe).

    ``on_data(channel, payload)`` and ``on_event(message)`` run on the reader thread.
    """

    def __init__(self, sock: socket.socket, on_data: Callable, on_event: Callable) -> None:
        self.sock = sock
        self.on_data = on_data
        self.on_event = on_event
        self.ids = itertools.count(1)
        self.pending: dict[int, list] = {}  # id -> [event, reply]
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.ready = threading.Event()
        self.ready_info: dict = {}
        self.closed = False
        self.close_reason = ""  # why the host closed the channel: the guest broke the protocol
        threading.Thread(target=self._read_loop, name="agent-reader", daemon=True).start()

    @classmethod
    def connect(cls, path: Path | str, on_data: Callable, on_event: Callable, *, timeout: float,
                alive: Callable[[], str | None], preamble: str = "") -> AgentClient:
        """Connects to the VMM's socket for the agent channel and waits for the agent's
        ``ready``. ``alive()`` returns why the VM died (or None); it is polled meanwhile.
        ``preamble``: a line to send first, answered by one line (hybrid vsock's ``CONNECT PORT``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = connect_unix(path)
                if preamble:
                    cls.handshake(sock, preamble)
                break
            except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
                pass
            cls._check(deadline, alive, timeout)
            time.sleep(0.02)
        client = cls(sock, on_data, on_event)
        while not client.ready.wait(0.1):
            if client.closed:  # the VMM is exiting: say why, once it is gone
                raise AgentError(cls._exit_reason(alive) or "the VM closed the agent channel before the agent was ready")
            cls._check(deadline, alive, timeout)
        return client

    @staticmethod
    def handshake(sock: socket.socket, preamble: str) -> None:
        """Sends ``preamble`` and reads its one-line answer; anything but ``OK ...`` is a refusal."""
        try:
            sock.sendall(preamble.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n") and len(answer) < 256:
                chunk = sock.recv(1)
                if not chunk:
                    raise ConnectionResetError("closed during the handshake")
                answer += chunk
        except OSError:
            sock.close()
            raise
        if not answer.startswith(b"OK"):
            sock.close()
            raise ConnectionRefusedError(f"{preamble!r} answered {answer!r}")

    @staticmethod
    def _exit_reason(alive: Callable[[], str | None], wait: float = 3.0) -> str | None:
        """Why the VM died, polled for a moment: its channel closes just before it exits."""
        deadline = time.monotonic() + wait
        while (reason := alive()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return reason

    @staticmethod
    def _check(deadline: float, alive: Callable[[], str | None], timeout: float) -> None:
        reason = alive()
        if reason:
            raise AgentError(reason)
        if time.monotonic() > deadline:
            raise AgentError(f"the guest agent did not answer within {timeout:.0f} s (see the console log)")

    def _read_loop(self) -> None:
        reader = FrameReader()
        try:
            while True:
                data = b"" if reader.failed else self.sock.recv(1 << 16)  # a failed reader raises its error
                if not data and not reader.failed:
                    break
                for kind, channel, payload in reader.feed(data):
                    if kind != CTRL:
                        self.on_data(channel, payload)
                        continue
                    check_message(payload)
                    if "event" not in payload:
                        self._reply(payload)
                    elif payload["event"] == "ready":
                        self.ready_info = payload
                        self.ready.set()
                    else:
                        self.on_event(payload)
        except OSError:
            pass
        except ProtocolError as exc:
            self.close_reason = f"the guest broke the agent protocol: {printable(exc, 300)}"
        except Exception as exc:  # noqa: BLE001 - guest data must never kill the reader silently
            self.close_reason = f"guest data the host could not handle: {printable(repr(exc), 300)}"
        if self.close_reason:
            logger.error("agent channel closed by the host: %s", self.close_reason)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.closed = True
        with self.lock:
            for waiter in self.pending.values():
                waiter[0].set()
        self.on_event({"event": "closed", "reason": self.close_reason})

    def _reply(self, payload: dict) -> None:
        with self.lock:
            waiter = self.pending.get(payload.get("id"))
        if waiter:
            waiter[1] = payload
            waiter[0].set()

    def _send(self, frame: bytes) -> None:
        with self.send_lock:
            try:
                self.sock.sendall(frame)
            except OSError as exc:
                raise AgentError(f"the agent channel is closed ({exc.strerror})") from None

    def call(self, op: str, timeout: float = 30.0, **args) -> dict:
        """Sends one request and waits for its reply; raises AgentError on refusal."""
        request_id = next(self.ids)
        waiter = [threading.Event(), None]
        with self.lock:
            self.pending[request_id] = waiter
        try:
            self._send(encode_ctrl({"id": request_id, "op": op, **args}))
            if not waiter[0].wait(timeout):
                raise AgentError(f"the guest agent did not answer {op!r} within {timeout:.0f} s")
        finally:
            with self.lock:
                self.pending.pop(request_id, None)
        reply = waiter[1]
        if reply is None:
            raise AgentError(f"the agent channel closed during {op!r}")
        if "error" in reply:
            raise AgentError(printable(reply["error"]))
        try:
            return check_reply(op, reply)
        except GuestProtocolError as exc:
            self.close_reason = f"the guest's reply to {op!r} broke the agent protocol: {exc}"
            logger.error("agent channel closed by the host: %s", self.close_reason)
            self.close()
            raise AgentError(self.close_reason) from None

    def send_data(self, channel: int, data: bytes) -> None:
        """Stream bytes to the guest; ``b""`` closes the stream."""
        self._send(encode_data(channel, data))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

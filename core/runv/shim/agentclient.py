"""The host side of the agent channel: requests with replies, events, and stream data."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from runv.agent.protocol import CTRL, FrameReader, ProtocolError, encode_ctrl, encode_data
from runv.api.errors import RunvError
from runv.api.sockets import connect_unix


class AgentError(RunvError):
    """The agent refused a request (its message is in the exception) or went away."""


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
            while data := self.sock.recv(1 << 16):
                for kind, channel, payload in reader.feed(data):
                    if kind != CTRL:
                        self.on_data(channel, payload)
                    elif "event" in payload:
                        if payload["event"] == "ready":
                            self.ready_info = payload
                            self.ready.set()
                        else:
                            self.on_event(payload)
                    else:
                        self._reply(payload)
        except (OSError, ProtocolError):
            pass
        self.closed = True
        with self.lock:
            for waiter in self.pending.values():
                waiter[0].set()
        self.on_event({"event": "closed"})

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
            raise AgentError(reply["error"])
        return reply

    def send_data(self, channel: int, data: bytes) -> None:
        """Stream bytes to the guest; ``b""`` closes the stream."""
        self._send(encode_data(channel, data))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

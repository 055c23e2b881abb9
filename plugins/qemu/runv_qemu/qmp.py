"""A synchronous QMP client: one connection per batch of commands, which is all runv asks of
QEMU. (An asyncio client cost every shim ≈6 MiB of memory for asyncio and ssl, and ≈12 ms
of imports to each command that speaks to QEMU.)

QMP is JSON, one message per line: QEMU greets, is put in command mode by
``qmp_capabilities``, then answers each ``{"execute": ...}`` with ``{"return": ...}`` or
``{"error": ...}``, with asynchronous ``{"event": ...}`` messages in between (skipped).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence

from runv.api import connect_unix

TIMEOUT = 10.0  # seconds for QEMU to answer one message


class QmpError(Exception):
    """QEMU refused a command, or the conversation broke off."""


def execute(path: str, commands: Sequence[tuple[str, dict | None]], fd: int | None = None,
            timeout: float = TIMEOUT) -> list:
    """Runs ``commands`` (name, arguments) on QEMU's QMP socket at ``path`` and returns their
    answers; ``fd`` is passed first with SCM_RIGHTS (for a ``getfd`` among them). Raises
    OSError when QEMU cannot be reached, QmpError when it refuses or goes away."""
    with connect_unix(path) as sock:
        sock.settimeout(timeout)
        reader = sock.makefile("rb")
        if "QMP" not in _message(reader):
            raise QmpError("the socket did not greet as QMP does")
        _call(sock, reader, "qmp_capabilities", None)
        if fd is not None:  # a space is blank to QMP's JSON parser: it only carries the descriptor
            socket.send_fds(sock, [b" "], [fd])
        return [_call(sock, reader, name, arguments) for name, arguments in commands]


def _call(sock: socket.socket, reader, name: str, arguments: dict | None):
    request = {"execute": name, **({"arguments": arguments} if arguments is not None else {})}
    sock.sendall(json.dumps(request).encode() + b"\n")
    while True:
        answer = _message(reader)
        if "return" in answer:
            return answer["return"]
        if "error" in answer:
            error = answer["error"]
            raise QmpError(f"{name}: {error.get('desc', error)}")


def _message(reader) -> dict:
    """The next message that is not an event."""
    while True:
        try:
            line = reader.readline()
        except ConnectionResetError:
            line = b""
        if not line:
            raise QmpError("QEMU closed the connection")
        message = json.loads(line)
        if "event" not in message:
            return message

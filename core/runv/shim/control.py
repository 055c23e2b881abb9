"""Talking to a container's shim over its control socket (one JSON line each way)."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runv.api.errors import RunvError

SOCKET = "shim.sock"


@contextmanager
def socket_name(path: Path | str) -> Iterator[str]:
    """A name to connect to a unix socket, also when its path is longer than sun_path
    allows (deep ``--root`` directories): the directory is reached through /proc/self/fd."""
    path = Path(path)
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


def connect_unix(path: Path) -> socket.socket:
    """A connected unix stream socket (any path length); raises OSError, leaking nothing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with socket_name(path) as name:
            sock.connect(name)
    except OSError:
        sock.close()
        raise
    return sock


def call(state_dir: Path, op: str, timeout: float = 60.0, **args) -> dict:
    """Sends one request to the shim and returns its reply; raises RunvError on refusal."""
    try:
        sock = connect_unix(state_dir / SOCKET)
    except OSError:
        raise RunvError(f"container {state_dir.name} is not running (its shim does not answer)") from None
    with sock:
        sock.settimeout(timeout)
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        reply = sock.makefile("rb").readline()
    if not reply:
        raise RunvError(f"the shim of container {state_dir.name} closed the connection during {op!r}")
    message = json.loads(reply)
    if "error" in message:
        raise RunvError(message["error"])
    return message

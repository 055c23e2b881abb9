"""Talking to a container's shim over its control socket (one JSON line each way), and what
the shim and its clients agree on: which signals are relayed, how an exit becomes a code."""

from __future__ import annotations

import json
import os
import signal
import socket

from runv.api.errors import RunvError
from runv.api.sockets import connect_unix

# The control protocol this release's shims speak, recorded in the container's state
# (Record.shim_protocol), so a later runv knows how to talk to a shim an earlier one started:
# 0 (nothing recorded): releases whose exec request carries the whole process (runv.verbs.exec.for_shim);
# 1: an exec request may carry ARGS and options instead, which the shim merges with the container's process;
# 2: the shim has a mount namespace of its own (runv.vm.mountns), so a pod member's shares come to it as mount
#    trees (``join`` with ``trees``, their descriptors beside the request), not as host paths (``shares``).
PROTOCOL = 2
MAX_FDS = 64  # descriptors one request may carry (a pod member's shares: its rootfs and volumes)
SOCKET = "shim.sock"
CONSOLE_LOG = "console.log"  # in the state directory: the guest console and the VMM's stderr
NOT_FORWARDED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH, signal.SIGPIPE}


def exit_code(status: dict) -> int:
    """An agent exit event as a shell-style exit code."""
    return status["code"] if "code" in status else 128 + status["signal"]


class ShimGone(RunvError):
    """The shim does not answer on its control socket (it exited, or never ran)."""


def call(state_dir: str | os.PathLike, op: str, timeout: float = 60.0, fds: list[int] = (), **args) -> dict:
    """Sends one request (with descriptors ``fds`` beside it) to the shim and returns its
    reply; raises RunvError on refusal."""
    try:
        sock = connect_unix(os.path.join(state_dir, SOCKET))
    except OSError:
        raise ShimGone(f"container {os.path.basename(state_dir)} is not running (its shim does not answer)") from None
    with sock:
        sock.settimeout(timeout)
        request = json.dumps({"op": op, **args}).encode() + b"\n"
        sent = socket.send_fds(sock, [request], list(fds)) if fds else 0
        sock.sendall(request[sent:])
        reply = sock.makefile("rb").readline()
    if not reply:
        raise RunvError(f"the shim of container {os.path.basename(state_dir)} closed the connection during {op!r}")
    message = json.loads(reply)
    if "error" in message:
        raise RunvError(message["error"])
    return message


def leave(sandbox_dir: str | os.PathLike, container_id: str) -> None:
    """Has the sandbox's shim take the pod member ``container_id`` out of its VM; nothing when
    that shim is gone (its VM and pod directory went with it)."""
    try:
        call(sandbox_dir, "leave", id=container_id)
    except ShimGone:
        pass

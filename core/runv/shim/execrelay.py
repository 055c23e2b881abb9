"""The shim's end of ``runv exec``: starts an exec'd process in the guest and relays its
streams, signals and window sizes over the exec client's connection until it exits
(the client's end is :mod:`runv.runtime.execclient`)."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import threading
from typing import TYPE_CHECKING

from runv.agent.protocol import CTRL, FrameReader, encode_ctrl, encode_data
from runv.api.errors import RunvError
from runv.log import logger

if TYPE_CHECKING:
    from runv.shim.server import Shim

CHANNELS_PER_EXEC = 16  # exec N uses agent channels 16N+1..16N+3, clear of the container's 1..3
STDOUT, STDERR = 1, 2  # the relay's stream numbers towards the exec client
_numbers = itertools.count(1)


def serve_exec(shim: Shim, conn: socket.socket, request: dict) -> None:
    """Serves one exec request on ``conn`` until the process exits."""
    from runv.oci.config import parse_process

    number = next(_numbers)
    name = f"exec-{number}"
    base = CHANNELS_PER_EXEC * number
    streams = {"stdin": base + 1, "stdout": base + 2, "stderr": base + 3}
    send_lock = threading.Lock()
    exited = threading.Event()
    held: list[bytes] | None = []  # output that arrived before the reply line went out

    def send(frame: bytes, reply: bool = False) -> None:
        nonlocal held
        with send_lock:
            if held is not None and not reply:
                held.append(frame)
                return
            frames = [frame] + (held or [])
            held = None
            try:
                for item in frames:
                    conn.sendall(item)
            except OSError:
                pass  # the relay is gone; the process still runs to its end

    def on_exit(message: dict) -> None:
        send(encode_ctrl({k: v for k, v in message.items() if k in ("code", "signal")}))
        exited.set()

    process = parse_process(request.get("process"), "exec request")
    shim.routes[streams["stdout"]] = lambda data: send(encode_data(STDOUT, data))
    shim.routes[streams["stderr"]] = lambda data: send(encode_data(STDERR, data))
    shim.exits[name] = on_exit
    try:
        pid = shim.hooks.exec(container=shim.container, process=process, agent=shim.agent, name=name, streams=streams)
    except RunvError as exc:
        forget(shim, name, streams)
        send(json.dumps({"error": str(exc)}).encode() + b"\n", reply=True)
        return
    send(json.dumps({"ok": True, "pid": pid}).encode() + b"\n", reply=True)
    relay_input(shim, conn, name, streams, process.terminal, exited)
    exited.wait()
    forget(shim, name, streams)


def relay_input(shim: Shim, conn: socket.socket, name: str, streams: dict, terminal: bool, exited: threading.Event) -> None:
    """Passes the client's stdin, signals and window sizes to the process; when the client
    goes away first, the process gets EOF (and a hang-up on a terminal)."""
    reader = FrameReader()
    try:
        while not exited.is_set() and (data := conn.recv(65536)):
            for kind, _channel, payload in reader.feed(data):
                if kind == CTRL and payload.get("op") == "signal":
                    shim.agent.call("signal", proc=name, signal=int(payload["signal"]))
                elif kind == CTRL and payload.get("op") == "winsize":
                    shim.agent.call("winsize", proc=name, rows=payload["size"][0], cols=payload["size"][1])
                elif kind != CTRL:
                    shim.agent.send_data(streams["stdin"], payload)
        if not exited.is_set():
            shim.agent.send_data(streams["stdin"], b"")
            if terminal:
                shim.agent.call("signal", proc=name, signal=signal.SIGHUP)
    except (RunvError, OSError) as exc:
        logger.debug("exec %s: %s", name, exc)


def forget(shim: Shim, name: str, streams: dict) -> None:
    shim.exits.pop(name, None)
    shim.routes.pop(streams["stdout"], None)
    shim.routes.pop(streams["stderr"], None)

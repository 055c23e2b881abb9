"""The shim's end of ``runv exec``: starts an exec'd process in the guest of the shim's own VM
(:class:`runv.vm.machine.Machine`) and relays its streams, signals and window sizes over
the exec client's connection until it exits (the client's end is :mod:`runv.shim.relay`)."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import threading
import traceback
from typing import TYPE_CHECKING

from runv.agent.protocol import CTRL, FrameReader, encode_ctrl, encode_data
from runv.api.errors import AgentError, RunvError
from runv.log import logger
from runv.shim.outbox import Outbox

if TYPE_CHECKING:
    from runv.vm.machine import Machine

CHANNELS_PER_EXEC = 16  # exec N uses agent channels 16N+1..16N+3, clear of the container's 1..3
STDOUT, STDERR = 1, 2  # the relay's stream numbers towards the exec client
_numbers = itertools.count(1)


def serve_exec(machine: Machine, conn: socket.socket, request: dict) -> None:
    """Serves one exec request on ``conn`` until the process exits."""
    from runv.oci.config import process_to_exec

    try:
        container = machine.member(request.get("container"))  # a pod member's process, or the shim's own container's
        process = process_to_exec(container.spec.process if container.spec else None, request)
    except RunvError as exc:
        return _refuse(conn, str(exc))
    except Exception as exc:  # noqa: BLE001 - a malformed request: the client must get an answer
        logger.error("shim: exec request: %s", traceback.format_exc())
        return _refuse(conn, f"internal error in the shim: {exc}")
    number = next(_numbers)
    name = f"init:{number}" if request.get("init") and container is not machine.container else f"exec-{number}"
    base = CHANNELS_PER_EXEC * number
    streams = {"stdin": base + 1, "stdout": base + 2, "stderr": base + 3}
    exited = threading.Event()
    outbox = Outbox(conn.sendall, name, held=True)  # output that arrives before the reply line waits

    def on_exit(message: dict) -> None:
        outbox.put(encode_ctrl({k: v for k, v in message.items() if k in ("code", "signal")}), control=True)
        exited.set()

    machine.routes[streams["stdout"]] = lambda data: outbox.put(encode_data(STDOUT, data))
    machine.routes[streams["stderr"]] = lambda data: outbox.put(encode_data(STDERR, data))
    machine.exits[name] = on_exit
    try:
        pid = machine.exec(container, process, name, streams)
    except RunvError as exc:
        forget(machine, name, streams)
        outbox.finish(0)
        _refuse(conn, str(exc))
        return
    try:
        conn.sendall(json.dumps({"ok": True, "pid": pid}).encode() + b"\n")
    except OSError:
        pass  # the relay is gone; the process still runs to its end
    outbox.release()
    relay_input(machine, conn, name, streams, process.terminal, exited)
    while not exited.wait(1.0):
        if machine.agent.closed:  # the guest went away (or was killed): no exit will come
            break
    forget(machine, name, streams)
    outbox.finish()


def _refuse(conn: socket.socket, error: str) -> None:
    try:
        conn.sendall(json.dumps({"error": error}).encode() + b"\n")
    except OSError:
        pass  # the client went away


def relay_input(machine: Machine, conn: socket.socket, name: str, streams: dict, terminal: bool, exited: threading.Event) -> None:
    """Passes the client's stdin, signals and window sizes to the process; when the client
    goes away first, the process gets EOF (and a hang-up on a terminal)."""
    reader = FrameReader()
    try:
        while not exited.is_set() and (data := conn.recv(65536)):
            for kind, _channel, payload in reader.feed(data):
                if kind == CTRL and payload.get("op") == "signal":
                    try:
                        machine.signal(name, int(payload["signal"]), bool(payload.get("all")))
                    except AgentError as exc:
                        logger.warning("exec %s: signal not delivered: %s", name, exc)
                elif kind == CTRL and payload.get("op") == "winsize":
                    machine.winsize(name, payload["size"][0], payload["size"][1])
                elif kind != CTRL:
                    machine.agent.send_data(streams["stdin"], payload)
        if not exited.is_set():
            machine.agent.send_data(streams["stdin"], b"")
            if terminal:
                machine.signal(name, signal.SIGHUP)
    except (RunvError, OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        logger.debug("exec %s: %s", name, exc)


def forget(machine: Machine, name: str, streams: dict) -> None:
    machine.exits.pop(name, None)
    machine.routes.pop(streams["stdout"], None)
    machine.routes.pop(streams["stderr"], None)

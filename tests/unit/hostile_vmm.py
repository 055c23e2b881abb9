"""A hypervisor plugin whose "guest agent" is hostile, for tests/unit/test_hostile_agent.py.

As a plugin (hook ``boot``) it starts this very file as a program: an agent that listens
on the VM's agent socket, speaks the framed protocol of :mod:`runv.agent.protocol` and
misbehaves as ``$RUNV_HOSTILE`` says (the shim inherits the variable from the test's
``runv``). It owns no process but itself: killing it is stopping the "VM".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

NAME = "hostile"
MODE_ENV = "RUNV_HOSTILE"
FAKE_PID = 4242
FLOOD = 400 << 20  # bytes a flooding agent streams
CHUNK = 1 << 20


def hypervisor_info():

    from runv.api import VM, HypervisorInfo
    from runv.testing.fakevmm import CAPABILITIES

    return HypervisorInfo(capabilities=CAPABILITIES.evolve(pause=False), vm=VM, priority=-2000)


def probe():
    return None


def boot(vm):
    from runv.api import VM, process_start_time

    socket_path = os.path.relpath(vm.agent_socket, vm.state_dir)  # bound relative to its cwd: deep --root
    argv = [sys.executable, "-S", "-B", __file__, socket_path, os.environ.get(MODE_ENV, "obedient")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__import__("runv").__file__).parents[1])}
    with open(vm.console_log, "ab") as console:
        agent = subprocess.Popen(argv, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                 env=env, start_new_session=True, close_fds=True)
    return VM(NAME, agent.pid, process_start_time(agent.pid), {"state_dir": str(vm.state_dir)})


def _hookimpls():
    from runv.api import hookimpl

    for function in (hypervisor_info, probe, boot):
        globals()[function.__name__] = hookimpl(function)


if __name__ != "__main__":
    _hookimpls()


# ------------------------------------------------------------------ the hostile agent

def serve(path: str, mode: str) -> None:
    from runv.agent.protocol import CTRL, HEADER, VERSION, FrameReader, encode_ctrl, encode_data

    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    conn, _ = server.accept()
    send = conn.sendall

    def raw_ctrl(payload: bytes) -> None:
        send(HEADER.pack(CTRL, 0, len(payload)) + payload)

    def flood(channel: int) -> None:
        chunk = encode_data(channel, b"x" * CHUNK)
        for _ in range(FLOOD // CHUNK):
            send(chunk)

    send(encode_ctrl({"event": "ready", **({} if mode == "other-release" else {"protocol": VERSION})}))
    reader = FrameReader()
    while data := conn.recv(65536):
        for kind, _channel, message in reader.feed(data):
            if kind != CTRL:
                continue
            op, rid = message.get("op"), message.get("id")
            ok = {"id": rid, "ok": True}
            if op == "prepare":
                send(encode_ctrl(ok))
            elif op == "exec":
                streams = message.get("streams") or {}
                if mode == "flood-before" and message.get("proc") != "init":
                    flood(streams["stdout"])
                send(encode_ctrl({**ok, "pid": FAKE_PID}))
                if message.get("proc") != "init":
                    continue
                if mode == "deep":
                    raw_ctrl(b"[" * 50000 + b"]" * 50000)
                elif mode == "non-dict":
                    raw_ctrl(b"[1, 2, 3]")
                elif mode == "list-id":
                    raw_ctrl(json.dumps({"id": [1], "ok": True}).encode())
                elif mode == "bad-code":
                    send(encode_ctrl({"event": "exit", "proc": "init", "code": "x"}))
                elif mode == "big-code":
                    send(encode_ctrl({"event": "exit", "proc": "init", "code": 300}))
                elif mode == "no-proc":
                    send(encode_ctrl({"event": "exit", "code": 0}))
                elif mode == "oversized":
                    send(HEADER.pack(CTRL, 0, 1 << 30))
                elif mode == "flood-after":
                    flood(streams["stdout"])
                elif mode == "oom-flood":  # OOM kills the guest never had, in its container and one that is not there
                    for cid in ["box"] * 50 + ["evil\n\x1b[31mINFO forged\x1b[0m"] * 5:
                        send(encode_ctrl({"event": "oom", "container": cid}))
            elif op == "signal":
                if mode != "never-answer":
                    send(encode_ctrl(ok))  # "delivered", and nothing happens
            elif op == "ps":
                if mode != "never-answer":
                    send(encode_ctrl({**ok, "processes": [{"pid": 1, "cmd": "evil\n\x1b[31mINFO forged\x1b[0m"}]}))
            else:
                send(encode_ctrl(ok))
    time.sleep(3600)  # the host closed: stay, as a hostile guest would, until killed


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])

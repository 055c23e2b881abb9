"""The client's end of a process the shim runs in the guest (``runv exec``, and a pod member's
own process, which runs as an exec of its pod's shim): one connection to the shim's control
socket, then agent-protocol frames over it, bridged to local stdio fds."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading

from runv import console
from runv.agent.protocol import CTRL, FrameReader, encode_ctrl, encode_data
from runv.api.errors import RunvError
from runv.api.sockets import connect_unix
from runv.shim import control
from runv.shim.control import NOT_FORWARDED, exit_code
from runv.stdio import start_pump, write_all

STDIN, STDOUT, STDERR = 0, 1, 2  # stream channels between an exec relay and the shim


class Relay:
    """One exec'd process's host end: a connection to the shim plus local stdio fds."""

    def __init__(self, state_dir: str | os.PathLike, request: dict, fds: tuple[int, int, int], *, terminal: bool) -> None:
        self.state_dir = state_dir
        self.request = request  # the exec request's fields: see exec_request (a pod member's adds container and init)
        self.fds = fds
        self.terminal = terminal
        self.sock: socket.socket | None = None
        self.send_lock = threading.Lock()

    def start(self) -> int:
        """Has the shim start the process; returns its guest PID."""
        self.sock = connect_unix(os.path.join(self.state_dir, control.SOCKET))
        self.sock.sendall(json.dumps({"op": "exec", **self.request}).encode() + b"\n")
        line = b""
        while not line.endswith(b"\n"):  # byte by byte: frames follow the reply on this socket
            byte = self.sock.recv(1)
            if not byte:
                raise RunvError(f"the shim of container {os.path.basename(self.state_dir)} closed the connection during exec")
            line += byte
        reply = json.loads(line)
        if "error" in reply:
            raise RunvError(reply["error"])
        return reply["pid"]

    def send(self, frame: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(frame)

    def signal(self, signum: int, all_processes: bool = False) -> None:
        self.send(encode_ctrl({"op": "signal", "signal": signum, **({"all": True} if all_processes else {})}))

    def resize(self) -> None:
        """Passes the terminal's window size on (SIGWINCH in the guest)."""
        self.send(encode_ctrl({"op": "winsize", "size": console.get_winsize(self.fds[0])}))

    def run(self) -> int:
        """Relays, forwarding the signals this process gets, until the process exits;
        returns its exit code."""
        for signum in signal.valid_signals() - NOT_FORWARDED:
            signal.signal(signum, lambda n, _f: self.signal(n))
        if self.terminal:
            signal.signal(signal.SIGWINCH, lambda *_: self.resize())
            if all(console.get_winsize(self.fds[0])):
                self.resize()  # conmon sizes the pty as soon as exec returns: maybe before this handler was set
        return self.pump()

    def pump(self) -> int:
        """Relays stdin and the output streams until the process exits; returns its exit code."""
        hangup = lambda: self.signal(signal.SIGHUP)
        start_pump(self.fds[0], lambda data: self.send(encode_data(STDIN, data)), hangup)
        reader = FrameReader()
        while data := self.sock.recv(65536):
            for kind, channel, payload in reader.feed(data):
                if kind == CTRL:
                    return exit_code(payload)
                if payload:
                    try:
                        write_all(self.fds[channel], payload)
                    except OSError:
                        pass  # our caller stopped reading; the process still runs to its end
        return 255

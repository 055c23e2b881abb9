"""``runv exec``: a host process per exec'd process, like the container's shim.

It asks the container's shim to start the process (the shim builds and checks it from the
request and the container's own process: this side imports no OCI model), then relays its
stdio (or a pty whose master went to ``--console-socket``) over the shim's control socket,
forwards the signals it receives, and exits with the process's exit code. With
``--detach`` it is a child in its own session whose PID goes to ``--pid-file``.
"""

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
from runv.oci.fields import is_int, read_json
from runv.records import Store
from runv.settings import Settings
from runv.shim import control
from runv.shim.control import NOT_FORWARDED, exit_code
from runv.stdio import start_pump, write_all
from runv.vm.spawn import OK, spawn_session, wait_exit_code, write_pid_file

STDIN, STDOUT, STDERR = 0, 1, 2  # stream channels between an exec relay and the shim


def check_can_exec(settings: Settings, container_id: str) -> str:
    store = Store(settings.root)
    status = store.read(container_id).live_status()
    if status == "paused":
        raise RunvError(f"cannot exec in a paused container {container_id}: resume it first")
    if status == "stopped":
        raise RunvError(f"cannot exec a container that has stopped ({container_id})")
    if status != "running":
        raise RunvError(f"cannot exec in container {container_id}: it is {status}, not running")
    return store.path(container_id)


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


def exec_request(*, process_file: str | os.PathLike | None, args: list[str], env: list[str], cwd: str | None, user: str | None,
                 additional_gids: list[int], tty: bool, caps: list[str], no_new_privs: bool) -> dict:
    """What ``runv exec`` asks the shim to run: ``--process``'s object as the file has it, or
    ARGS and the options that override the container's own process, their spelling checked
    here, before anything is set up (the shim merges them with the container's process and
    checks the rest: runv.oci.config.process_to_exec)."""
    if process_file is not None:
        return {"process": read_json(process_file, "process file"), "source": str(process_file)}
    if not args:
        raise RunvError("exec needs a command (ARGS...) or --process FILE")
    for item in env:
        if "=" not in item:
            raise RunvError(f"invalid --env {item!r}: use KEY=VALUE")
    identity = None
    if user is not None:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise RunvError(f"invalid --user {user!r}: use numeric UID[:GID]")
        identity = {"uid": int(uid), "gid": int(gid) if gid else 0}
    if cwd is not None and not cwd.startswith("/"):
        raise RunvError(f"invalid --cwd {cwd!r}: it must be an absolute path")
    return {"command": {"args": args, "env": env, "cwd": cwd, "user": identity, "additionalGids": additional_gids,
                        "tty": tty, "caps": caps, "noNewPrivileges": no_new_privs}}


def terminal_of(request: dict) -> tuple[bool, tuple[int, int]]:
    """Whether the requested process wants a terminal, and the pty's rows and columns (0, 0:
    the default), known before the shim checks the request (a bad size is its to report)."""
    if "command" in request:
        return request["command"]["tty"], (0, 0)
    process = request["process"] if isinstance(request["process"], dict) else {}
    size = process.get("consoleSize") if isinstance(process.get("consoleSize"), dict) else {}
    rows, cols = size.get("height"), size.get("width")
    fits = all(is_int(n) and 0 < n < 1 << 16 for n in (rows, cols))
    return process.get("terminal") is True, (rows, cols) if fits else (0, 0)


def exec_process(settings: Settings, container_id: str, request: dict, *, detach: bool, pid_file: str | os.PathLike | None,
                 console_socket: str | os.PathLike | None) -> int:
    """Runs the requested process in the container; returns the exit code (0 when detached)."""
    state_dir = check_can_exec(settings, container_id)
    terminal, size = terminal_of(request)
    pty_size = size if terminal else None
    if terminal:
        if console_socket:
            console.check_console_socket(console_socket)
        elif detach:
            raise RunvError("cannot allocate a terminal for a detached exec without --console-socket")
        else:
            console.require_terminal()
    if not detach and not terminal:
        relay = Relay(state_dir, request, (0, 1, 2), terminal=False)
        relay.start()
        return relay.run()
    if terminal and not console_socket:
        with console.private_console_socket() as (path, listener):
            pid = _spawn(state_dir, request, pty_size, path, pid_file)
            console.attach(console.receive_master(listener))
            return wait_exit_code(pid)
    pid = _spawn(state_dir, request, pty_size, console_socket, pid_file)
    return 0 if detach else wait_exit_code(pid)


def _spawn(state_dir: str, request: dict, pty_size: tuple[int, int] | None, console_socket: str | os.PathLike | None,
           pid_file: str | os.PathLike | None) -> int:
    """Forks the relay into its own session (with a pty of ``pty_size`` for a terminal);
    returns its PID once the process started."""

    def child(report) -> int:
        fds = (0, 1, 2)
        try:
            if pty_size is not None:
                master, slave = console.open_pty(*pty_size)
                console.take_controlling_tty(slave)
                console.send_master(console_socket, master)
                console.stdio_to(slave)  # containerd reads exec's output until EOF: let go of it
                fds = (slave, slave, slave)
            relay = Relay(state_dir, request, fds, terminal=pty_size is not None)
            relay.start()
        except RunvError as exc:
            report(str(exc))
            return 1
        report(OK)
        return relay.run()

    pid, answer = spawn_session(child)
    if answer != OK:
        raise RunvError(answer or "the exec relay died before the process started")
    write_pid_file(pid_file, pid)
    return pid

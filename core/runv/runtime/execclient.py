"""``runv exec``: a host process per exec'd process, like the container's shim.

It asks the container's shim to start the process, then relays its stdio (or a pty whose
master went to ``--console-socket``) over the shim's control socket, forwards the signals
it receives, and exits with the process's exit code. With ``--detach`` it is a child in
its own session whose PID goes to ``--pid-file``.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path

from runv import terminal as console
from runv.agent.protocol import CTRL, FrameReader, encode_ctrl, encode_data
from runv.api.errors import RunvError
from runv.api.sockets import connect_unix
from runv.oci.config import Process
from runv.runtime.spawn import OK, spawn_session, wait_exit_code, write_pid_file
from runv.settings import Settings
from runv.shim import control
from runv.shim.control import NOT_FORWARDED, exit_code
from runv.state import Store
from runv.stdio import start_pump, write_all

STDIN, STDOUT, STDERR = 0, 1, 2  # stream channels between an exec relay and the shim


def check_can_exec(settings: Settings, container_id: str) -> Path:
    store = Store(settings.root)
    status = store.read(container_id).live_status()
    if status == "paused":
        raise RunvError(f"cannot exec in a paused container {container_id}: resume it first")
    if status == "stopped":
        raise RunvError(f"cannot exec a container that has stopped ({container_id})")
    if status != "running":
        raise RunvError(f"cannot exec in container {container_id}: it is {status}, not running")
    return store.dir(container_id)


class Relay:
    """One exec'd process's host end: a connection to the shim plus local stdio fds."""

    def __init__(self, state_dir: Path, process: Process, fds: tuple[int, int, int], **request) -> None:
        self.state_dir = state_dir
        self.process = process
        self.fds = fds
        self.request = request  # more fields of the exec request (a pod member's container and init)
        self.sock: socket.socket | None = None
        self.send_lock = threading.Lock()

    def start(self) -> int:
        """Has the shim start the process; returns its guest PID."""
        self.sock = connect_unix(self.state_dir / control.SOCKET)
        self.sock.sendall(json.dumps({"op": "exec", "process": self.process.to_json(), **self.request}).encode() + b"\n")
        line = b""
        while not line.endswith(b"\n"):  # byte by byte: frames follow the reply on this socket
            byte = self.sock.recv(1)
            if not byte:
                raise RunvError(f"the shim of container {self.state_dir.name} closed the connection during exec")
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
        if self.process.terminal:
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


def exec_process(settings: Settings, container_id: str, process: Process, *, detach: bool, pid_file: Path | None, console_socket: Path | None) -> int:
    """Runs ``process`` in the container; returns the exit code (0 when detached)."""
    state_dir = check_can_exec(settings, container_id)
    if process.terminal:
        if console_socket:
            console.check_console_socket(console_socket)
        elif detach:
            raise RunvError("cannot allocate a terminal for a detached exec without --console-socket")
        else:
            console.require_terminal()
    if not detach and not process.terminal:
        relay = Relay(state_dir, process, (0, 1, 2))
        relay.start()
        return relay.run()
    if process.terminal and not console_socket:
        with console.private_console_socket() as (path, listener):
            pid = _spawn(state_dir, process, path, pid_file)
            console.attach(console.receive_master(listener))
            return wait_exit_code(pid)
    pid = _spawn(state_dir, process, console_socket, pid_file)
    return 0 if detach else wait_exit_code(pid)


def _spawn(state_dir: Path, process: Process, console_socket: Path | None, pid_file: Path | None) -> int:
    """Forks the relay into its own session; returns its PID once the process started."""

    def child(report) -> int:
        fds = (0, 1, 2)
        try:
            if process.terminal:
                size = process.console_size
                master, slave = console.open_pty(size.height, size.width) if size else console.open_pty()
                console.take_controlling_tty(slave)
                console.send_master(console_socket, master)
                console.stdio_to(slave)  # containerd reads exec's output until EOF: let go of it
                fds = (slave, slave, slave)
            relay = Relay(state_dir, process, fds)
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


def make_process(
    settings: Settings,
    container_id: str,
    *,
    process_file: Path | None,
    args: list[str],
    env: list[str],
    cwd: str | None,
    user: str | None,
    additional_gids: list[int],
    tty: bool,
    caps: list[str] = (),
    no_new_privs: bool = False,
) -> Process:
    """The process to exec: ``--process`` as given, or ARGS with the container's
    environment (``-e`` overriding by name), working directory, user and the rest of its
    process spec (capabilities, rlimits, noNewPrivileges...); ``--cap`` adds a capability
    as runc's does (bounding, effective, permitted; ambient when the spec has inheritable
    ones), ``--no-new-privs`` sets noNewPrivileges."""
    import attrs

    from runv.oci.config import User, load_bundle, parse_process, read_json
    from runv.oci.security import parse_capabilities

    if process_file is not None:
        return parse_process(read_json(process_file, "process file"), str(process_file))
    if not args:
        raise RunvError("exec needs a command (ARGS...) or --process FILE")
    base = load_bundle(Path(Store(settings.root).read(container_id).bundle))[0].process
    merged = {item.split("=", 1)[0]: item for item in base.env}
    for item in env:
        if "=" not in item:
            raise RunvError(f"invalid --env {item!r}: use KEY=VALUE")
        merged[item.split("=", 1)[0]] = item
    identity = base.user
    if user is not None:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise RunvError(f"invalid --user {user!r}: use numeric UID[:GID]")
        identity = User(uid=int(uid), gid=int(gid) if gid else 0)
    if additional_gids:
        identity = attrs.evolve(identity, additional_gids=tuple(additional_gids))
    if cwd is not None and not cwd.startswith("/"):
        raise RunvError(f"invalid --cwd {cwd!r}: it must be an absolute path")
    security = dict(base.security)
    if caps:
        parse_capabilities({"bounding": list(caps)}, "exec", "--cap")
        sets = {key: list(value) for key, value in (security.get("capabilities") or {}).items()}
        for key in ("bounding", "effective", "permitted") + (("ambient",) if sets.get("inheritable") else ()):
            sets[key] = sets.get(key, []) + [c.upper() for c in caps if c.upper() not in sets.get(key, [])]
        security["capabilities"] = sets
    if no_new_privs:
        security["noNewPrivileges"] = True
    return Process(args=tuple(args), env=tuple(merged.values()), cwd=cwd or base.cwd, terminal=tty, user=identity,
                   security=security)

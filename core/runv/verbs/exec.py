"""``runv exec``: a host process per exec'd process, like the container's shim.

It asks the container's shim to start the process (the shim builds and checks it from the
request and the container's own process: this side imports no OCI model), then relays its
stdio (or a pty whose master went to ``--console-socket``) over the shim's control socket,
forwards the signals it receives, and exits with the process's exit code. With
``--detach`` it is a child in its own session whose PID goes to ``--pid-file``.
"""

from __future__ import annotations

import os

from runv import console
from runv.api.errors import RunvError
from runv.oci.fields import is_int, read_json
from runv.records import Record, Store
from runv.settings import Settings
from runv.shim.relay import Relay
from runv.vm.spawn import OK, spawn_session, wait_exit_code, write_pid_file


def check_can_exec(settings: Settings, container_id: str) -> tuple[str, Record]:
    """The container's state directory and record, once it may take an exec."""
    store = Store(settings.root)
    record = store.read(container_id)
    status = record.live_status()
    if status == "paused":
        raise RunvError(f"cannot exec in a paused container {container_id}: resume it first")
    if status == "stopped":
        raise RunvError(f"cannot exec a container that has stopped ({container_id})")
    if status != "running":
        raise RunvError(f"cannot exec in container {container_id}: it is {status}, not running")
    return store.path(container_id), record


def for_shim(request: dict, record: Record, state_dir: str) -> dict:
    """The exec request in the dialect of the container's shim (``Record.shim_protocol``): a
    shim an earlier release started (protocol 0) takes only a whole process, so ARGS and
    their options are merged with the container's own process here, as that release's CLI
    did, by the same rules (runv.oci.config.process_to_exec)."""
    if record.shim_protocol >= 1 or "command" not in request:
        return request
    from pathlib import Path

    from runv.oci.config import process_to_exec

    container = record.container(Path(state_dir))
    process = process_to_exec(container.spec.process if container.spec else None, request)
    return {"process": process.to_json(), "source": "exec request"}


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
    state_dir, record = check_can_exec(settings, container_id)
    request = for_shim(request, record, state_dir)
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

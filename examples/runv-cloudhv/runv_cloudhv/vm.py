"""Starting Cloud Hypervisor, with one virtiofsd per share, and driving it over its REST API.

The VMM runs as a child of the shim in the container's state directory, in a session of
its own, with the guest console (on its stdout) and its stderr appended to ``console.log``.
Pause, resume and shutdown are ``PUT /api/v1/vm.pause``, ``vm.resume`` and
``vmm.shutdown`` on its ``--api-socket`` (what ``ch-remote`` sends), spoken here with
:mod:`http.client` over the unix socket: no dependency beyond the standard library.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from runv.api import VM, RunvError, VMSpec, await_start, connect_unix, is_running, process_start_time, stop_process
from runv_cloudhv import command

NAME = "cloudhv"  # the entry-point name: the VM record names its plugin by it
START_TIMEOUT = 20.0  # seconds for the VMM's API socket (and each virtiofsd's socket) to appear
API_TIMEOUT = 10.0  # seconds for one API request
QUIT_TIMEOUT = 5.0  # seconds the VMM gets to shut down before SIGKILL
FS_GRACE = 2.0  # seconds a virtiofsd gets after SIGTERM (it exits by itself once the VMM is gone)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix stream socket (any path length, through :func:`runv.api.connect_unix`)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = connect_unix(self.socket_path)
        self.sock.settimeout(self.timeout)


def api(socket_path: str, endpoint: str, method: str = "PUT", body: dict | None = None,
        timeout: float = API_TIMEOUT) -> Any:
    """One request to cloud-hypervisor's REST API (``/api/v1/ENDPOINT``); returns the decoded
    JSON answer (None for an empty one) or raises RunvError with the VMM's own words."""
    connection = _UnixHTTPConnection(socket_path, timeout)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, f"/api/v1/{endpoint}", body=payload, headers=headers)
        response = connection.getresponse()
        text = response.read().decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RunvError(f"cloud-hypervisor API {endpoint}: no answer on {socket_path}: {why}") from None
    finally:
        connection.close()
    if response.status >= 300:
        raise RunvError(f"cloud-hypervisor refused {endpoint} (HTTP {response.status}): {text or response.reason}")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _terminate(pid: int, start_time: int | None) -> None:
    """SIGTERM, only to the process that is still ours (never a reused PID)."""
    if is_running(pid, start_time):
        os.kill(pid, signal.SIGTERM)


class CloudHvVM(VM):
    """A ``cloud-hypervisor`` process (``pid``) and, in ``data``: its API socket (``api``),
    the virtiofsd processes serving its shares (``virtiofsd``: ``[pid, start_time]`` pairs),
    its command line (``argv``) and ``console_log``. Every method works from the record
    alone, in any later ``runv`` process."""

    def api(self, endpoint: str, method: str = "PUT", body: dict | None = None) -> Any:
        return api(self.data["api"], endpoint, method, body)

    def info(self) -> dict:
        """``GET vm.info``: the VM's state (``Running``, ``Paused``...) and configuration."""
        return self.api("vm.info", method="GET")

    def stop(self, force: bool = False) -> None:
        """Asks the VMM to exit (API ``vmm.shutdown``; SIGTERM, which it also handles, when the
        API does not answer), kills it after a grace period, then stops the virtiofsd
        processes it used. Converges when any of them is already gone."""
        stop_process(self.pid, self.start_time, ask=self._shutdown, grace=QUIT_TIMEOUT, force=force)
        for pid, start_time in self.data.get("virtiofsd", ()):
            stop_process(pid, start_time, ask=functools.partial(_terminate, pid, start_time), grace=FS_GRACE, force=force)

    def _shutdown(self) -> None:
        try:
            self.api("vmm.shutdown")
        except RunvError:
            _terminate(self.pid, self.start_time)

    def pause(self) -> None:
        self.api("vm.pause")

    def resume(self) -> None:
        self.api("vm.resume")


def _spawn(argv: list[str], vm: VMSpec, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    with open(vm.console_log, "ab") as log:
        return subprocess.Popen(argv, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=pass_fds, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, what: str, vm: VMSpec) -> None:
    """Returns once ``proc`` has made the socket ``path``; fails with the log's last words."""
    await_start(proc, path.is_socket, vm.console_log, what, START_TIMEOUT, expected=f"make {path.name}")


def start(vm: VMSpec, plugin: str = NAME) -> CloudHvVM:
    """Starts a virtiofsd per share, then cloud-hypervisor, and returns once its API socket
    is up; on any failure stops what it started and raises RunvError (the tools' own words)."""
    binary = command.cloud_hypervisor()
    server = command.virtiofsd()
    if binary is None or (vm.shares and server is None):
        raise RunvError(f"cannot boot the VM of container {vm.name}: {command.missing()}")
    argv = command.command(vm, binary)  # refuses what the programs could not parse, before anything runs
    servers_argv = [command.virtiofsd_command(vm, index, server) for index in range(len(vm.shares))] if server else []
    sockets = [vm.state_dir / command.fs_socket(i) for i in range(len(vm.shares))] + [vm.state_dir / command.API_SOCKET]
    for path in sockets:  # a socket left by an earlier VM would look like this one's
        path.unlink(missing_ok=True)
    servers: list[list] = []
    vmm = None
    try:
        for index, share in enumerate(vm.shares):
            proc = _spawn(servers_argv[index], vm)
            servers.append([proc.pid, process_start_time(proc.pid)])
            _wait_for(sockets[index], proc, f"virtiofsd for share {share.tag!r}", vm)
        vmm = _spawn(argv, vm, pass_fds=tuple(nic.fd for nic in vm.nics))
        start_time = process_start_time(vmm.pid)
        _wait_for(sockets[-1], vmm, command.BINARY, vm)
    except BaseException:
        if vmm is not None and vmm.poll() is None:
            vmm.kill()
            vmm.wait()
        for pid, server_start in servers:
            stop_process(pid, server_start, force=True)
        raise
    return CloudHvVM(plugin, vmm.pid, start_time, {
        "api": str(sockets[-1].absolute()),
        "virtiofsd": servers,
        "argv": argv,
        "console_log": str(vm.console_log),
    })

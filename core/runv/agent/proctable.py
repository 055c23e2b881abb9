"""The running processes by name and output fd: their stdio relayed to and from the host, their exits reaped and reported."""

import os
import select
import time

from runv.agent.errors import RequestError
from runv.agent.processes import GuestProcess, spawn
from runv.agent.protocol import encode_ctrl, encode_data

OUTPUT_CHUNK = 65536  # bytes read from a process's stdout or stderr at once
EXIT_GRACE = 1.0  # seconds an exited process's output may keep flowing before exit is sent


class ProcessTable:
    """The host's processes by name and by output fd; ``send`` takes the frames for the host."""

    def __init__(self, rootfs: str, send) -> None:
        self.rootfs = rootfs
        self.send = send
        self.by_name = {}  # name -> GuestProcess
        self.by_fd = {}  # output fd -> GuestProcess
        self.primary = None  # the id of the first container prepared: the VM's own (a pod's sandbox)
        self.roots = {}  # container id -> its rootfs (the primary's is ``rootfs``; a pod member's its own)
        self.confined = {}  # container id -> runv.agent.confine.GuestContainer (in a VM, once prepared)

    @property
    def container(self):
        """The primary container's confinement (None before prepare, or on the host)."""
        return self.confined.get(self.primary)

    def add(self, container_id: str, root: str, confined) -> None:
        """A prepared container: the first is the primary, later ones pod members."""
        if self.primary is None:
            self.primary = container_id
        self.roots[container_id] = root
        if confined is not None:
            self.confined[container_id] = confined

    def resolve(self, container_id) -> str | None:
        """The id a request's ``container`` names: the primary when absent (or before any prepare)."""
        if not container_id or not self.roots:
            return self.primary
        if container_id not in self.roots:
            raise RequestError(f"no container {container_id} in this VM")
        return container_id

    def of_container(self, container_id) -> list:
        """The running processes the host started in that container."""
        return [p for p in self.by_name.values() if p.container == container_id and p.status is None]

    def start(self, name: str, message: dict) -> GuestProcess:
        if name in self.by_name:
            raise RequestError(f"process {name!r} already exists")
        cid = self.resolve(message.get("container"))
        proc = spawn(self.roots.get(cid, self.rootfs), name, message, self.confined.get(cid))
        proc.container = cid
        self.by_name[name] = proc
        for fd in proc.outputs:
            self.by_fd[fd] = proc
        return proc

    def lookup(self, name: str) -> GuestProcess:
        proc = self.by_name.get(name)
        if proc is None or proc.status is not None:
            raise RequestError(f"process {name!r} is not running")
        return proc

    def kill_all(self, signum: int) -> None:
        """``signum`` to every process group the host started (each process leads its own session)."""
        for proc in self.by_name.values():
            if proc.status is None:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

    # ---------------------------------------------------------------- stdio relay

    def register(self, poller, read_output: bool) -> None:
        """Outputs to read (unless the host is behind) and stdins with bytes waiting."""
        if read_output:
            for fd in self.by_fd:
                poller.register(fd, select.POLLIN)
        for proc in self.by_name.values():
            if proc.stdin_fd is not None and proc.stdin_queue:
                poller.register(proc.stdin_fd, select.POLLOUT)

    def on_ready(self, fd: int) -> None:
        """A process's output is readable or its stdin writable."""
        if fd in self.by_fd:
            self.on_output(fd)
        else:
            self.on_stdin_writable(fd)

    def on_output(self, fd: int) -> None:
        proc = self.by_fd[fd]
        try:
            data = os.read(fd, OUTPUT_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO from a pty master once the slave side is gone
            data = b""
        self.send(encode_data(proc.outputs[fd], data))
        if not data:
            self.close_output(fd)

    def close_output(self, fd: int) -> None:
        proc = self.by_fd.pop(fd)
        del proc.outputs[fd]
        if fd != proc.tty_fd:
            os.close(fd)

    def on_data(self, channel: int, payload: bytes) -> None:
        """Stream bytes from the host: queued for the process whose stdin ``channel`` is."""
        for proc in self.by_name.values():
            if proc.stdin_channel == channel and proc.stdin_fd is not None:
                if payload:
                    proc.stdin_queue += payload
                else:
                    proc.stdin_eof = True
                self.on_stdin_writable(proc.stdin_fd)
                return

    def on_stdin_writable(self, fd: int) -> None:
        for proc in self.by_name.values():
            if proc.stdin_fd == fd:
                break
        else:
            return
        try:
            if proc.stdin_queue:
                written = os.write(fd, proc.stdin_queue)
                del proc.stdin_queue[:written]
        except BlockingIOError:
            return
        except OSError:  # the process closed its stdin: drop what it will never read
            proc.stdin_queue.clear()
            proc.stdin_eof = True
        if proc.stdin_eof and not proc.stdin_queue:
            if fd == proc.tty_fd:
                os.write(fd, b"\x04")  # end-of-file on a terminal is the EOF character
            else:
                os.close(fd)
            proc.stdin_fd = None

    # ---------------------------------------------------------------- exits

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for proc in self.by_name.values():
                if proc.pid == pid and proc.status is None:
                    proc.status = os.waitstatus_to_exitcode(status)
                    proc.exited_at = time.monotonic()

    def pending_exits(self) -> bool:
        return any(p.status is not None for p in self.by_name.values())

    def flush_exits(self) -> None:
        """Sends ``exit`` once a process's output is drained (or after a grace period,
        when a background child still holds its stdout open)."""
        now = time.monotonic()
        for name, proc in list(self.by_name.items()):
            if proc.status is None:
                continue
            if proc.outputs and now - proc.exited_at < EXIT_GRACE:
                continue
            for fd in list(proc.outputs):
                self.send(encode_data(proc.outputs[fd], b""))
                self.close_output(fd)
            if proc.stdin_fd is not None and proc.stdin_fd != proc.tty_fd:
                os.close(proc.stdin_fd)
            if proc.tty_fd is not None:
                os.close(proc.tty_fd)
            code = proc.status
            status = {"code": code} if code >= 0 else {"signal": -code}
            self.send(encode_ctrl({"event": "exit", "proc": name, **status}))
            del self.by_name[name]

"""The agent's event loop: one poll over the host channel and the processes' stdio, frames in, requests dispatched."""

import errno
import os
import select
import signal

from runv.agent import cgroups, confine, identity, network, pods, pressure, processes, stats, terminal
from runv.agent.channel import Port, Stream
from runv.agent.debug import log
from runv.agent.errors import RequestError
from runv.agent.mounts import PRIVATE
from runv.agent.oomwatch import OomWatch
from runv.agent.proctable import ProcessTable
from runv.agent.protocol import CTRL, FrameReader, ProtocolError, encode_ctrl

ROOTFS = "/rootfs"  # where op_prepare mounts the container's rootfs and processes are chrooted
READ_CHUNK = 65536  # bytes read from the host at once
HIGH_WATER = 4 << 20  # stop reading process output while this much waits for the host
IDLE_POLL_MS = 100  # poll timeout while the host is away or an exit waits for its output


def op_poweroff(agent, message: dict) -> None:
    """Syncs and powers the VM off. An agent that is not PID 1 (on the host: the tests,
    ``--socket`` mode) kills its processes and stops serving instead, never the host."""
    os.sync()
    agent.flush()
    if os.getpid() != 1:
        agent.processes.kill_all(signal.SIGKILL)
        agent.running = False
        return
    os.execv("/bin/busybox", ["poweroff", "-f"])


# Every request the agent serves: op -> handler(agent, message), which returns the
# reply's fields (or None) and refuses with RequestError; an OSError becomes "op: reason".
OPERATIONS = {
    "ping": identity.op_ping,
    "clone": identity.op_clone,
    "prepare": confine.op_prepare,
    "exec": processes.op_exec,
    "signal": processes.op_signal,
    "winsize": terminal.op_winsize,
    "ps": stats.op_ps,
    "stats": stats.op_stats,
    "update": cgroups.op_update,
    "network": network.op_network,
    "freeze": pods.op_freeze,
    "remove": pods.op_remove,
    "poweroff": op_poweroff,
}


class Agent:
    """Serves the host over ``channel`` (see runv.agent.channel) until ``running`` is False.

    ``channel`` may also be a bare fd: a connected socket (``run()`` returns when the host
    closes it; ``Agent(fd, rootfs="/")`` runs processes without chroot, as the tests do),
    or with ``is_port=True`` a virtio-serial port or tty whose host end comes and goes.
    """

    operations = OPERATIONS

    def __init__(self, channel, *, rootfs: str = ROOTFS, is_port: bool = False) -> None:
        if isinstance(channel, int):
            channel = Port(channel) if is_port else Stream(channel)
        self.channel = channel
        self.rootfs = rootfs
        self.private = PRIVATE  # the guest's staging area on this machine (--private moves it)
        # containers are confined (namespaces, pivot_root...) by the agent of a VM, PID 1 there;
        # not by an agent on the host (tests, --socket), which runs processes as it always did
        self.confine = rootfs != "/" and os.getpid() == 1
        self.reader = FrameReader()
        self.outbuf = bytearray()
        self.processes = ProcessTable(rootfs, self.send)
        self.oom = OomWatch(self.send)
        self.running = True
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # memory stalls, where the agent is a VM's PID 1 (never on the host: the OOM killer is the host's there)
        self.stalls = pressure.watch() if os.getpid() == 1 else None
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def send(self, frame: bytes) -> None:
        self.outbuf += frame

    def ready_event(self) -> dict:
        return {"event": "ready", **identity.identity()}

    def run(self) -> None:
        if self.channel.connected:
            self.send(encode_ctrl(self.ready_event()))
        while self.running:
            self.step()

    def step(self) -> None:
        """One poll: the channel (or the host arriving), signals, OOM kills, process stdio; then exits."""
        channel = self.channel
        poller = select.poll()
        if channel.connected:
            channel_fd = channel.fd
            poller.register(channel_fd, select.POLLIN | (select.POLLOUT if self.outbuf else 0))
        else:
            channel_fd, mask = channel.waiting()
            poller.register(channel_fd, mask)
        poller.register(self.wake_r, select.POLLIN)
        if self.stalls is not None:
            poller.register(self.stalls, select.POLLPRI)
        self.oom.sync(self.processes.confined)
        self.oom.register(poller)
        self.processes.register(poller, read_output=len(self.outbuf) <= HIGH_WATER)
        timeout = IDLE_POLL_MS if (not channel.connected or self.processes.pending_exits()) else None
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            events = []
        oom = False
        for fd, mask in events:
            if fd == channel_fd:
                self.on_channel(mask)
            elif fd == self.wake_r:
                self.drain_wakeups()
            elif fd == self.stalls:
                pressure.on_stall()
            elif self.oom.owns(fd):
                oom = True
            else:
                self.processes.on_ready(fd)
        self.processes.reap()
        if oom or self.processes.pending_exits():  # a kill is told before the exit it caused
            self.oom.check()
        self.processes.flush_exits()

    def on_channel(self, mask: int) -> None:
        channel = self.channel
        if not channel.connected:
            if channel.arrived(mask):
                self.reader = FrameReader()
                self.send(encode_ctrl(self.ready_event()))
            return
        if mask & select.POLLOUT and self.outbuf:
            self.flush()
        if not channel.connected or not mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
            return
        try:
            data = os.read(channel.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            data = b""
        if not data:
            self.on_disconnect()
            return
        try:
            frames = self.reader.feed(data)
        except ProtocolError as exc:
            log(f"dropping connection: {exc}")
            self.on_disconnect()
            return
        for kind, stream, payload in frames:
            if kind == CTRL:
                self.on_request(payload)
            else:
                self.processes.on_data(stream, payload)

    def on_disconnect(self) -> None:
        self.outbuf.clear()
        if not self.channel.lost():
            self.running = False

    def flush(self) -> None:
        if not self.channel.connected:
            return
        try:
            written = os.write(self.channel.fd, self.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.on_disconnect()
            return
        del self.outbuf[:written]

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def on_request(self, message: dict) -> None:
        request_id = message.get("id")
        op = message.get("op", "")
        handler = self.operations.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise RequestError(f"unknown operation {op!r}")
            result = handler(self, message) or {}
            reply = {"id": request_id, "ok": True, **result}
        except RequestError as exc:
            reply = {"id": request_id, "error": str(exc)}
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            reply = {"id": request_id, "error": f"{op}: {exc.strerror or exc}{where}"}
        self.send(encode_ctrl(reply))

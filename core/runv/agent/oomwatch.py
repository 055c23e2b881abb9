"""The guest's OOM kills told to the host as they happen: the agent polls (POLLPRI) each
container's ``memory.events``, whose ``oom_kill`` count the kernel raises and notifies on
every kill in the container's cgroup (the guest's OOM killer, or the one a memory stall
calls, :mod:`runv.agent.pressure`), and sends ``{"event": "oom", "container": ID}``; the
shim repeats the kill on the host, where the container's clients watch
(:mod:`runv.vm.oommirror`). Checked again before any exit is sent, so the host learns of
a kill before the exit it caused (the kernel may hold its notification back 20 ms)."""

import os
import select

from runv.agent.protocol import encode_ctrl

EVENTS = "memory.events"


def kills(fd: int) -> int:
    """The ``oom_kill`` count of an open ``memory.events`` (reading it also re-arms its poll)."""
    for line in os.pread(fd, 4096, 0).decode().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


class OomWatch:
    """The ``memory.events`` of every prepared container that has a cgroup; ``send`` takes frames."""

    def __init__(self, send) -> None:
        self.send = send
        self.watched = {}  # container id -> [fd, oom_kill count last seen]

    def sync(self, confined: dict) -> None:
        """Watches each container of ``confined`` (id -> GuestContainer) with a cgroup,
        forgets those gone (a removed cgroup's file would poll ready forever)."""
        for cid in [cid for cid in self.watched if cid not in confined]:
            os.close(self.watched.pop(cid)[0])
        for cid, container in confined.items():
            if cid in self.watched or not container.cgroup:
                continue
            try:
                fd = os.open(f"{container.cgroup}/{EVENTS}", os.O_RDONLY | os.O_CLOEXEC)
                self.watched[cid] = [fd, kills(fd)]
            except OSError:  # no memory controller in this guest: nothing to watch
                pass

    def register(self, poller) -> None:
        for fd, _ in self.watched.values():
            poller.register(fd, select.POLLPRI)

    def owns(self, fd: int) -> bool:
        return any(fd == entry[0] for entry in self.watched.values())

    def check(self) -> None:
        """An ``oom`` event for each container whose count rose since the last look."""
        for cid, entry in list(self.watched.items()):
            try:
                count = kills(entry[0])
            except OSError:  # its cgroup went away
                os.close(self.watched.pop(cid)[0])
                continue
            if count > entry[1]:
                self.send(encode_ctrl({"event": "oom", "container": cid}))
            entry[1] = count

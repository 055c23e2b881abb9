"""A pod member's guest: the container runs in another container's VM (its sandbox, the pod's
first container, :mod:`runv.vm.pods`), which that container's shim owns; this shim holds a
reference to it, its control socket, and boots nothing.

The member's rootfs and volumes go into the sandbox's VM through the pod directory
(:mod:`runv.vm.podshare`: this shim copies their mount trees in its own mount namespace and
passes them to the sandbox's shim, which mounts them and has the guest prepare them),
and its process runs there as an exec of the sandbox's shim that creates the container's
own namespaces and cgroup in the guest (:class:`runv.shim.relay.Relay`). The member's shim
is still the container's shim for runc's contract: its PID is the container's, it relays
the process's stdio, signals and exit code, and answers ``runv`` over its own control
socket, forwarding to the sandbox.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import TYPE_CHECKING

from runv.api.errors import RunvError
from runv.api.frozen import to_json
from runv.api.sockets import connect_unix
from runv.log import logger
from runv.shim import control
from runv.shim.relay import Relay
from runv.vm import bringup, podshare
from runv.vm.machine import INIT
from runv.vm.teardown import teardown

if TYPE_CHECKING:
    from runv.api.spec import Process
    from runv.api.vm import StorageAttachment
    from runv.loader import Selection
    from runv.records import Store
    from runv.shim.server import Shim

KILL_GRACE = 5.0  # seconds the guest has to end a member after a SIGKILL before the pod's VM is stopped


def mounts_own(store: Store, sandbox: str) -> bool:
    """Whether the shim of ``sandbox`` has a mount namespace of its own (control protocol 2),
    so a member's shares must reach it as mount trees; a shim an earlier runv started took
    host paths, and its members' shims stay in their caller's namespace to mount them."""
    return store.read(sandbox).shim_protocol >= 2


class PodMember:
    def __init__(self, shim: Shim, plugins: Selection, sandbox: str) -> None:
        self.shim = shim
        self.hooks = plugins.hooks
        self.storage = plugins.storage
        self.sandbox = sandbox
        self.sandbox_dir = shim.store.dir(sandbox)
        self.attachment: StorageAttachment | None = None
        self.relay: Relay | None = None  # the container's process, once started
        self.resources = shim.container.spec.linux.get("resources") or {}  # as `runv update` leaves them
        self.exited = threading.Event()

    def boot(self) -> None:
        """The container's shares staged and mounted in the sandbox's pod directory, its
        rootfs and mounts prepared by the guest."""
        container = self.shim.container
        cid = container.id
        confined = bringup.confinement(container)
        self.attachment = bringup.attach_storage(container, self.hooks, self.storage)
        self.shim.store.update(cid, storage=self.storage, attachment=to_json(self.attachment))
        if self.attachment.disks:
            raise RunvError(f"container {cid} joins the VM of container {self.sandbox}, which takes no more disks: "
                            f"use the share storage mode (io.runv.storage.mode=share)")
        bringup.enter_cgroups_path(container)
        prepare = bringup.prepare_request(container, to_json(podshare.in_pod(self.attachment.rootfs, cid)),
                                          [to_json(m) for m in podshare.plan_in_pod(self.attachment.mounts, cid)], confined)
        if not mounts_own(self.shim.store, self.sandbox):  # its shim mounts host paths (this shim stayed in their namespace)
            control.call(self.sandbox_dir, "join", id=cid, prepare=prepare,
                         shares=[[s.tag, str(s.path), s.readonly] for s in self.attachment.shares])
            return
        trees = podshare.copies(self.attachment.shares)  # what this shim sees: the sandbox's shim may not
        try:
            control.call(self.sandbox_dir, "join", id=cid, prepare=prepare, trees=[tag for tag, _ in trees],
                         fds=[tree for _, tree in trees])
        finally:
            for _, tree in trees:
                os.close(tree)

    def booted(self) -> None:
        """Nothing more: the sandbox's shim keeps its VM's network."""

    def launch(self, process: Process) -> None:
        """The container's process started as an exec of the sandbox's shim, relayed to this
        shim's stdio until it exits."""
        relay = Relay(self.sandbox_dir, {"process": process.to_json(), "container": self.shim.container.id, "init": True},
                      self.shim.stdio, terminal=process.terminal)
        relay.start()
        self.relay = relay
        threading.Thread(target=self.wait_exit, name="member-relay", daemon=True).start()

    def wait_exit(self) -> None:
        code = self.relay.pump()
        self.exited.set()
        self.shim.events.put(("exit", {"proc": INIT, "code": code}))

    def signal(self, signum: int, all_processes: bool) -> None:
        if not self.shim.started:
            self.shim.events.put(("killed", None) if signum == signal.SIGKILL else ("signal", signum))
            return
        if signum == signal.SIGKILL:  # the guest is asked; one that does not obey loses the pod's VM
            self.shim.killed = True
            threading.Thread(target=self.enforce_kill, daemon=True).start()
        self.relay.signal(signum, all_processes or signum == signal.SIGKILL)

    def enforce_kill(self) -> None:
        if self.exited.wait(KILL_GRACE):
            return
        cid = self.shim.container.id
        logger.error("container %s: the guest did not end it %.0f s after SIGKILL; stopping the VM of %s",
                     cid, KILL_GRACE, self.sandbox)
        try:
            control.call(self.sandbox_dir, "signal", signal=signal.SIGKILL)
        except RunvError as exc:
            logger.error("container %s: %s", cid, exc)
        self.shim.events.put(("killed", None))

    def forward(self, signum: int) -> None:
        self.relay.signal(signum)

    def resize(self) -> None:
        self.relay.resize()

    def ps(self, request: dict) -> dict:
        return control.call(self.sandbox_dir, "ps", container=self.shim.container.id)

    def stats(self, request: dict) -> dict:
        reply = control.call(self.sandbox_dir, "stats", container=self.shim.container.id)
        reply.pop("ok", None)
        return reply

    def update(self, request: dict) -> None:
        from runv.oci.resources import merged, parse_resources

        with self.shim.lock:
            resources = merged(self.resources, request.get("resources"))
            control.call(self.sandbox_dir, "member_update", container=self.shim.container.id,
                         files=parse_resources(resources, "update"))
            self.resources = resources

    def freeze(self, request: dict) -> None:
        control.call(self.sandbox_dir, "freeze", container=self.shim.container.id, frozen=bool(request.get("frozen")))

    def serve_exec(self, conn: socket.socket, request: dict) -> None:
        """``runv exec`` in this container: relayed to the sandbox's shim, naming it."""
        import json

        try:
            upstream = connect_unix(self.sandbox_dir / control.SOCKET)
        except OSError:
            conn.sendall(json.dumps({"error": f"the VM of container {self.shim.container.id} is gone"}).encode() + b"\n")
            return
        with upstream:
            upstream.sendall(json.dumps({**request, "container": self.shim.container.id}).encode() + b"\n")
            threading.Thread(target=splice, args=(conn, upstream), daemon=True).start()
            splice(upstream, conn)

    def vmm_killed_by(self) -> None:
        """The VM is the sandbox's: never this shim's child."""
        return None

    def pod_ops(self) -> dict:
        return {}

    def teardown(self, force: bool) -> None:
        teardown(self.shim.container, self.hooks, None, self.attachment, force=force,
                 leave=lambda: control.leave(self.sandbox_dir, self.shim.container.id))


def splice(source: socket.socket, sink: socket.socket) -> None:
    """Copies ``source`` to ``sink`` until either side closes."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass

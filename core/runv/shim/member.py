"""The shim of a container that runs in another container's VM (a pod member: its sandbox
is the pod's first container, :mod:`runv.vm.pods`).

It boots nothing: its rootfs and volumes go into the sandbox's VM through the pod
directory (:mod:`runv.vm.podshare`, the sandbox's shim mounts them and has the guest prepare
them), and its process runs there as an exec of the sandbox's shim that creates the
container's own namespaces and cgroup in the guest. It is still the container's shim for
runc's contract: its PID is the container's, it relays the process's stdio, signals and
exit code, and answers ``runv`` over its own control socket, forwarding to the sandbox.
"""

from __future__ import annotations

import signal
import socket
import threading

from runv import console as terminal
from runv.api.errors import RunvError
from runv.api.frozen import to_json
from runv.api.sockets import connect_unix
from runv.log import logger
from runv.oci.config import ConsoleSize
from runv.shim import control
from runv.shim.server import INIT, Shim
from runv.vm import bringup, podshare
from runv.vm.ocihooks import run_hooks
from runv.vm.teardown import teardown

KILL_GRACE = 5.0  # seconds the guest has to end a member after a SIGKILL before the pod's VM is stopped


class Member(Shim):
    def __init__(self, *args, sandbox: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sandbox = sandbox
        self.sandbox_dir = self.store.dir(sandbox)
        self.relay = None  # runv.verbs.exec.Relay of the container's process, once started
        self.exited = threading.Event()

    def boot(self) -> None:
        """The container's shares staged and mounted in the sandbox's pod directory, its
        rootfs and mounts prepared by the guest, its terminal opened, its create hooks run."""
        cid = self.container.id
        confined = bringup.confinement(self.container)
        self.attach_storage()
        if self.attachment.disks:
            raise RunvError(f"container {cid} joins the VM of container {self.sandbox}, which takes no more disks: "
                            f"use the share storage mode (io.runv.storage.mode=share)")
        bringup.enter_cgroups_path(self.container)
        prepare = bringup.prepare_request(self.container, to_json(podshare.in_pod(self.attachment.rootfs, cid)),
                                          [to_json(m) for m in podshare.plan_in_pod(self.attachment.mounts, cid)], confined)
        control.call(self.sandbox_dir, "join", id=cid, prepare=prepare,
                     shares=[[s.tag, str(s.path), s.readonly] for s in self.attachment.shares])
        if self.container.spec.process.terminal:
            self.open_terminal()
        state = self.store.read(cid).oci_state()
        for kind in ("createRuntime", "createContainer", "prestart"):
            run_hooks(self.container.spec, kind, state.evolve(status="creating" if kind == "createRuntime" else "created"), fatal=True)

    def serve_exec(self, conn: socket.socket, request: dict) -> None:
        """``runv exec`` in this container: relayed to the sandbox's shim, naming it."""
        import json

        try:
            upstream = connect_unix(self.sandbox_dir / control.SOCKET)
        except OSError:
            conn.sendall(json.dumps({"error": f"the VM of container {self.container.id} is gone"}).encode() + b"\n")
            return
        with upstream:
            upstream.sendall(json.dumps({**request, "container": self.container.id}).encode() + b"\n")
            threading.Thread(target=splice, args=(conn, upstream), daemon=True).start()
            splice(upstream, conn)

    def op_start(self, request: dict) -> None:
        from runv.verbs.exec import Relay

        with self.lock:
            if self.started:
                raise RunvError(f"cannot start an already running container {self.container.id}")
            process = self.container.spec.process
            if process.terminal:
                rows, cols = terminal.get_winsize(self.stdio[0])
                if rows and cols:
                    process = process.evolve(console_size=ConsoleSize(height=rows, width=cols))
            relay = Relay(self.sandbox_dir, {"process": process.to_json(), "container": self.container.id, "init": True},
                          self.stdio, terminal=process.terminal)
            relay.start()
            self.relay, self.started = relay, True
            record = self.store.update(self.container.id, status="running")
        threading.Thread(target=self.wait_exit, name="member-relay", daemon=True).start()
        run_hooks(self.container.spec, "poststart", record.oci_state(), fatal=False)

    def wait_exit(self) -> None:
        code = self.relay.pump()
        self.exited.set()
        self.events.put(("exit", {"proc": INIT, "code": code}))

    def op_signal(self, request: dict) -> None:
        signum = request.get("signal")
        if type(signum) is not int or signum not in signal.valid_signals():
            raise RunvError(f"invalid signal {signum!r}")
        if not self.started:
            self.events.put(("killed", None) if signum == signal.SIGKILL else ("signal", signum))
            return
        if signum == signal.SIGKILL:  # the guest is asked; one that does not obey loses the pod's VM
            self.killed = True
            threading.Thread(target=self.enforce_kill, daemon=True).start()
        self.relay.signal(signum, bool(request.get("all")) or signum == signal.SIGKILL)

    def enforce_kill(self) -> None:
        if self.exited.wait(KILL_GRACE):
            return
        logger.error("container %s: the guest did not end it %.0f s after SIGKILL; stopping the VM of %s",
                     self.container.id, KILL_GRACE, self.sandbox)
        try:
            control.call(self.sandbox_dir, "signal", signal=signal.SIGKILL)
        except RunvError as exc:
            logger.error("container %s: %s", self.container.id, exc)
        self.events.put(("killed", None))

    def forward_signal(self, signum: int) -> int | None:
        if not self.started:
            return super().forward_signal(signum)
        self.relay.signal(signum)
        return None

    def resize(self) -> None:
        if self.started and self.container.spec.process.terminal:
            self.relay.resize()

    def op_ps(self, request: dict) -> dict:
        return control.call(self.sandbox_dir, "ps", container=self.container.id)

    def op_stats(self, request: dict) -> dict:
        reply = control.call(self.sandbox_dir, "stats", container=self.container.id)
        reply.pop("ok", None)
        return reply

    def op_update(self, request: dict) -> None:
        from runv.oci.resources import merged, parse_resources

        with self.lock:
            resources = merged(self.limits.resources, request.get("resources"))
            control.call(self.sandbox_dir, "member_update", container=self.container.id,
                         files=parse_resources(resources, "update"))
            self.limits.resources = resources

    def op_freeze(self, request: dict) -> None:
        control.call(self.sandbox_dir, "freeze", container=self.container.id, frozen=bool(request.get("frozen")))

    def teardown(self, force: bool = False) -> None:
        teardown(self.container, self.hooks, None, self.attachment, force=force, sandbox=self.sandbox_dir)


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


"""A shim's own VM: the guest of a container that booted it (or restored it from a template),
reached through the :class:`runv.vm.machine.Machine` this shim holds, which also serves the
containers that join it (a pod's members, through their shims' ``join`` and ``leave``)."""

from __future__ import annotations

import signal
import socket
from typing import TYPE_CHECKING, Callable

from runv.api.errors import AgentError, RunvError
from runv.log import logger
from runv.shim import execrelay
from runv.stdio import start_pump
from runv.vm import bringup
from runv.vm.machine import INIT, Machine

if TYPE_CHECKING:
    from runv.api.spec import Process
    from runv.loader import Selection
    from runv.shim.server import Shim

STREAMS = {"stdin": 1, "stdout": 2, "stderr": 3}  # the container process's agent channels


class OwnVM:
    def __init__(self, shim: Shim, plugins: Selection) -> None:
        self.shim = shim
        self.machine = Machine(shim.settings, shim.store, shim.container, plugins,
                               on_event=lambda message: shim.events.put((message["event"], message)))

    def boot(self) -> None:
        """The VM restored from a matching template, or booted cold (and a template made in
        the background for the next container of its shape), then the rootfs prepared."""
        from runv.templates import background, restore

        machine, settings = self.machine, self.shim.settings
        confined = bringup.confinement(machine.container)
        spec = machine.build()
        restored = restore.restore(settings.template, spec, machine.hypervisor, machine.on_data, machine.on_agent_event,
                                   persist=machine.persist, attach_nic=machine.attach_nic)
        if restored:
            machine.adopt(*restored)
        else:
            machine.boot(spec)
            background.after_cold_boot(settings, machine.hypervisor, spec, machine.container.state_dir)
        machine.prepare(spec, confined)

    def booted(self) -> None:
        """Once the create hooks ran: the network as the caller left it (the Docker model)."""
        self.machine.sync_net()

    def launch(self, process: Process) -> None:
        """The container's process started by the ``exec`` hook, its output routed to the
        shim's stdio and its stdin pumped from there."""
        shim, machine = self.shim, self.machine
        machine.sync_net()
        machine.routes[STREAMS["stdout"]] = shim.sink(shim.stdio[1])
        if not process.terminal:  # a terminal has one output stream
            machine.routes[STREAMS["stderr"]] = shim.sink(shim.stdio[2])
        machine.exec(shim.container, process, INIT, STREAMS)
        start_pump(shim.stdio[0], lambda data: machine.agent.send_data(STREAMS["stdin"], data),
                   on_hangup=lambda: shim.events.put(("signal", signal.SIGHUP)))

    def signal(self, signum: int, all_processes: bool) -> None:
        if signum == signal.SIGKILL:
            return self.kill()
        if not self.shim.started:
            self.shim.events.put(("signal", signum))
            return
        try:
            self.machine.signal(INIT, signum, all_processes)
        except AgentError as exc:
            raise RunvError(f"container {self.shim.container.id}: signal {signum} not delivered: {exc}") from None

    def kill(self) -> None:
        """SIGKILL is the host's: the VM is stopped from outside at once (the guest is never
        asked, so a hostile agent cannot refuse it) and the container stops with 137."""
        self.shim.killed = True
        logger.debug("container %s: SIGKILL, stopping the VM from the host", self.shim.container.id)
        self.machine.stop()
        self.shim.events.put(("killed", None))

    def forward(self, signum: int) -> None:
        try:
            self.machine.signal(INIT, signum)
        except AgentError as exc:
            logger.debug("signal %d not delivered: %s", signum, exc)

    def resize(self) -> None:
        from runv import console

        rows, cols = console.get_winsize(self.shim.stdio[0])
        try:
            self.machine.winsize(INIT, rows, cols)
        except AgentError as exc:
            logger.debug("window size not delivered: %s", exc)

    def ps(self, request: dict) -> dict:
        return {"processes": self.machine.agent.call("ps", **self.machine.scope(request))["processes"]}

    def stats(self, request: dict) -> dict:
        return self.machine.agent.call("stats", **self.machine.scope(request))

    def update(self, request: dict) -> None:
        with self.shim.lock:
            self.machine.update(request.get("resources"))

    def freeze(self, request: dict) -> None:
        self.machine.freeze(request)

    def serve_exec(self, conn: socket.socket, request: dict) -> None:
        execrelay.serve_exec(self.machine, conn, request)

    def vmm_killed_by(self) -> int | None:
        return self.machine.killed_by()

    # ---------------------------------------------------------------- the pod's members

    def pod_ops(self) -> dict[str, Callable[[dict], None]]:
        """What the shims of the containers that join this VM ask of it."""
        return {"join": self.join, "leave": self.leave, "member_update": self.machine.update_member}

    def join(self, request: dict) -> None:
        cid = str(request.get("id"))
        with self.shim.lock:
            agent = self.machine.agent
            if agent is None or agent.closed or self.shim.killed:
                raise RunvError(f"container {cid} cannot join the VM of container {self.shim.container.id}: it is stopping")
            tags, trees = request.get("trees") or [], request["fds"]
            if len(tags) != len(trees) or not all(isinstance(tag, str) for tag in tags):
                raise RunvError(f"container {cid}: {len(tags)} shares named for {len(trees)} mount trees sent")
            self.machine.join(cid, request.get("prepare", {}), list(zip(tags, trees)))

    def leave(self, request: dict) -> None:
        with self.shim.lock:
            self.machine.leave(str(request.get("id")))

    def teardown(self, force: bool) -> None:
        self.machine.teardown(force)

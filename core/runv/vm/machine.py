"""The VM a container booted, as the one process that owns it (its shim) holds it: its
storage and VMSpec (:mod:`runv.vm.bringup`), the running VM and the one connection to
its guest agent, the agent's output streams routed to their consumers, the containers
that joined it (a pod: :mod:`runv.vm.podshare`), its size (:mod:`runv.vm.limits`) and
its teardown. It knows nothing of the CLI or of the shim that holds it: the shim gets
the guest's events (the container's exit, the channel closing) through ``on_event``.

Starting the VM itself is the holder's choice (a cold :meth:`Machine.boot`, or a clone a
template gave, :meth:`Machine.adopt`), so templates stay a layer above this one.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable

from runv.api.errors import AgentError, RunvError
from runv.api.frozen import to_json
from runv.log import logger
from runv.vm import bringup, oommirror, pidns, podshare
from runv.vm.agentclient import printable
from runv.vm.limits import Limits
from runv.vm.proctree import child_status
from runv.vm.teardown import teardown

if TYPE_CHECKING:
    from runv.api.container import Container
    from runv.api.hypervisor import VM
    from runv.api.spec import Process
    from runv.api.vm import Nic, StorageAttachment, VMSpec
    from runv.loader import Selection
    from runv.records import Store
    from runv.settings import Settings
    from runv.vm.agentclient import AgentClient

INIT = "init"  # the agent's name for the container process
MEMBER_TIMEOUT = 30.0  # seconds the guest has to kill and unmount a member that leaves
VMM_EXIT_WAIT = 2.0  # seconds a closed agent channel waits for the VMM's exit status
SIGNAL_TIMEOUT = 5.0  # seconds the guest has to acknowledge a signal before it is reported
OOM_REPEAT_EVERY = 1.0  # seconds: at most one OOM kill a container repeated on the host in this time


class Machine:
    """One container's VM and its guest agent; ``on_event(message)`` gets the container
    process's exit and the channel's ``closed`` (on the agent's reader thread). OOM kills
    in the guest are repeated on the host here (:meth:`repeat_oom_kill`)."""

    def __init__(self, settings: Settings, store: Store, container: Container, plugins: Selection,
                 on_event: Callable[[dict], None]) -> None:
        self.settings = settings
        self.store = store
        self.container = container
        self.hooks = plugins.hooks
        self.hypervisor = plugins.hypervisor
        self.caps = plugins.hypervisor.info.capabilities
        self.storage = plugins.storage
        self.on_event = on_event
        self.attachment: StorageAttachment | None = None
        self.vm: VM | None = None
        self.agent: AgentClient | None = None
        self.routes: dict[int, Callable[[bytes], None]] = {}  # agent output channel -> consumer
        self.exits: dict[str, Callable[[dict], None]] = {}  # exec'd process name -> exit handler
        self.oom_repeated: dict[str, float] = {}  # container id -> when an OOM kill was last repeated on the host
        self.limits = Limits(container.id, container.spec.linux.get("resources"))  # as `runv update` leaves them
        self.members: dict[str, Container] = {}  # the containers that joined this VM

    # ---------------------------------------------------------------- bring-up

    def build(self) -> VMSpec:
        """The container's storage attached (and recorded for the teardown), its VM built and
        checked against the hypervisor's capabilities."""
        self.attachment = bringup.attach_storage(self.container, self.hooks, self.storage)
        self.store.update(self.container.id, storage=self.storage, attachment=to_json(self.attachment))
        spec = bringup.container_vm(self.settings, self.caps, self.hooks, self.container, self.attachment)
        bringup.check_vm(spec, self.caps, self.hypervisor.name)
        self.limits.booted(spec.memory_mib, spec.vcpus)
        self.store.update(self.container.id, netns=bringup.served_netns(self.container))
        logger.debug("booting %s with %s: %s", self.container.id, self.hypervisor.name, spec)
        return spec

    def persist(self, vm: VM | None) -> None:
        """The running VM, in memory and in the record: a crash leaves it findable."""
        if vm is None:
            raise RunvError(f"hypervisor plugin {self.hypervisor.name!r} booted nothing")
        self.vm = vm
        self.store.update(self.container.id, hypervisor=self.hypervisor.name, vm=pidns.for_host(vm.record()))

    def boot(self, spec: VMSpec) -> None:
        """Boots ``spec`` cold and waits for its agent."""
        self.persist(self.hooks.boot(vm=spec))
        self.agent = bringup.connect_agent(spec, self.vm, self.caps, self.on_data, self.on_agent_event)

    def adopt(self, vm: VM, agent: AgentClient) -> None:
        """Takes a VM started another way (a template's clone, recorded already) and its agent."""
        self.vm, self.agent = vm, agent

    def prepare(self, spec: VMSpec, confined: dict) -> None:
        """Has the guest mount the container's rootfs and volumes (its shares as this VM
        serves them) and make its namespaces ready."""
        served = self.caps.evolve(shared_fs=self.vm.shared_fs() or self.caps.shared_fs)
        self.agent.call("prepare", **bringup.vm_prepare_request(self.container, self.attachment, spec, served, confined))

    def attach_nic(self, vm: VM, nic: Nic) -> None:
        bringup.attach_nic(vm, self.caps, nic)

    def sync_net(self) -> None:
        self.hooks.sync_net(container=self.container, agent=self.agent, attach=lambda nic: self.attach_nic(self.vm, nic))

    # ---------------------------------------------------------------- the guest's streams

    def on_data(self, channel: int, payload: bytes) -> None:
        route = self.routes.get(channel)
        if route is not None and payload:
            route(payload)

    def on_agent_event(self, message: dict) -> None:
        if message["event"] == "oom":
            self.repeat_oom_kill(message["container"])
            return
        if message["event"] == "exit" and message["proc"] != INIT:
            handler = self.exits.get(message["proc"])
            if handler:
                handler(message)
            return
        self.on_event(message)

    def repeat_oom_kill(self, container_id: str) -> None:
        """The guest's OOM killer killed in this VM's container or a member: the kill
        repeated in that container's host cgroup (:mod:`runv.vm.oommirror`), on the reader
        thread, so before the guest's next event (the exit it caused) is handled."""
        try:
            container = self.member(container_id)
        except RunvError as exc:
            logger.warning("an OOM kill in the guest: %s", printable(exc))
            return
        now = time.monotonic()
        if now - self.oom_repeated.get(container.id, -OOM_REPEAT_EVERY) < OOM_REPEAT_EVERY:
            return  # a burst of kills is one on the host, and a guest cannot keep the host killing
        self.oom_repeated[container.id] = now
        oommirror.mirror(container.state_dir, container.id)

    def exec(self, container: Container, process: Process, name: str, streams: dict) -> int:
        """Starts ``process`` in ``container`` (this VM's own or a member) through the ``exec``
        hook; returns its guest PID."""
        return self.hooks.exec(container=container, process=process, agent=self.agent, name=name, streams=streams)

    def signal(self, name: str, signum: int, all_processes: bool = False) -> None:
        """Signals the guest process ``name`` (with ``all_processes``, every process of its
        container); AgentError when the guest does not acknowledge it."""
        self.agent.call("signal", timeout=SIGNAL_TIMEOUT, proc=name, signal=signum, all=all_processes)

    def winsize(self, name: str, rows: int, cols: int) -> None:
        """The terminal of the guest process ``name`` resized (SIGWINCH in the guest)."""
        self.agent.call("winsize", timeout=SIGNAL_TIMEOUT, proc=name, rows=rows, cols=cols)

    # ---------------------------------------------------------------- the containers in it

    def member(self, container_id: str | None) -> Container:
        """The container a request names: a member, or (``None``, its own id) the VM's own."""
        if container_id in (None, self.container.id):
            return self.container
        found = self.members.get(container_id)
        if found is None:
            raise RunvError(f"container {container_id} is not in the VM of container {self.container.id}")
        return found

    def scope(self, request: dict) -> dict:
        """The agent's ``container`` field for a request about one container of the VM."""
        return {"container": self.member(request.get("container")).id}

    def join(self, cid: str, prepare: dict, trees: list[tuple[str, int]]) -> None:
        """A member's shares (``(tag, detached mount tree)``, which its shim copied in its own
        mount namespace) mounted in the pod directory, then its rootfs prepared in the guest."""
        if cid in self.members:
            raise RunvError(f"container {cid} is already in the VM of container {self.container.id}")
        member = self.store.read(cid).container(self.store.dir(cid))
        podshare.attach(self.container.state_dir, cid, trees)
        try:
            self.agent.call("prepare", **prepare, container=cid)
        except AgentError as exc:
            podshare.detach(self.container.state_dir, cid)
            raise RunvError(f"container {cid}: {exc}") from None
        self.members[cid] = member
        logger.debug("container %s joined the VM of %s", cid, self.container.id)

    def leave(self, cid: str) -> None:
        """A member's processes killed and its mounts undone in the guest, then in the pod
        directory; converges (a member's teardown may run twice)."""
        self.members.pop(cid, None)
        if self.agent is not None and not self.agent.closed:
            try:
                self.agent.call("remove", timeout=MEMBER_TIMEOUT, container=cid)
            except AgentError as exc:
                logger.warning("container %s: the guest did not remove member %s: %s", self.container.id, cid, exc)
        podshare.detach(self.container.state_dir, cid)

    def freeze(self, request: dict) -> None:
        """Freezes or thaws one member's processes (``runv pause`` of a container in a pod)."""
        try:
            self.agent.call("freeze", **self.scope(request), frozen=bool(request.get("frozen")))
        except AgentError as exc:
            raise RunvError(f"container {request.get('container')}: {exc}") from None

    def update(self, resources: dict | None) -> None:
        """The VM's own container's new limits (:class:`runv.vm.limits.Limits`), on its host
        cgroup too (:func:`runv.vm.cgroupspath.update`)."""
        from runv.vm import cgroupspath

        self.limits.update(resources, self.vm, self.agent, self.caps, self.hypervisor.name)
        try:
            cgroupspath.update(self.container.state_dir, self.limits.resources, self.limits.size[1])
        except RunvError as exc:
            raise RunvError(f"container {self.container.id}: the guest has the new limits, its host cgroup not: {exc}") from None

    def update_member(self, request: dict) -> None:
        """A member's new cgroup files (:func:`runv.oci.resources.parse_resources`): the VM is not resized."""
        try:
            self.agent.call("update", **self.scope(request), resources=request.get("files") or {})
        except AgentError as exc:
            raise RunvError(f"container {request.get('container')}: {exc}") from None

    # ---------------------------------------------------------------- the end

    def stop(self) -> None:
        """Stops the VM from the host at once (the guest is never asked)."""
        if self.vm is not None:
            try:
                self.vm.stop(force=True)
            except RunvError as exc:
                logger.error("container %s: cannot kill the VM: %s", self.container.id, exc)

    def killed_by(self) -> int | None:
        """The signal that killed the VMM (a child of this process), once it has exited, or None."""
        status = None if self.vm is None else child_status(self.vm.pid, VMM_EXIT_WAIT)
        return os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None

    def teardown(self, force: bool = False) -> None:
        """Closes the agent and takes the VM down (:func:`runv.vm.teardown.teardown`)."""
        if self.agent:
            self.agent.close()
        teardown(self.container, self.hooks, self.vm, self.attachment, force=force)

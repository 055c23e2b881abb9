"""Starting a container's VM from a template: pick one (:mod:`runv.templates.match`),
restore it, grow it to the container's size when the template is smaller, hot-plug its
NICs and make the clone its own (clock, RNG seed); on any failure the clone is stopped and
the container boots cold."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable

from runv.api.errors import RunvError
from runv.log import logger
from runv.templates import match, store
from runv.vm import bringup

if TYPE_CHECKING:
    from runv.api.hypervisor import VM
    from runv.api.vm import VMSpec
    from runv.loader import Hypervisor
    from runv.vm.agentclient import AgentClient

POKE_TIMEOUT = 20.0  # seconds for a restored agent to answer its first request


def choose(choice: str, vm: VMSpec, hypervisor: Hypervisor) -> tuple[dict | None, VMSpec, str | None]:
    """The template record to start ``vm`` from and the VM as the template restores it, or
    None and why not (a warning, or None). A hypervisor that resizes VMs restores a VM from
    a template of its shape but smaller (memory, vCPUs), the largest there is, and grows it
    after: so the default template serves every container at least its size."""
    templates = hypervisor.info.templates
    wanted = match.shape(vm, hypervisor.name, templates)
    current = match.source(vm.kernel, vm.initrd)
    if choice in (match.AUTO, match.OFF) or wanted is None:
        auto = choice == match.AUTO and wanted is not None
        if auto:
            store.reclaim()  # what dead makers left, before the templates there are read
        candidates = store.all_records() if auto else []
    else:
        try:
            candidates = [store.read(choice)]
        except RunvError as exc:
            return None, vm, str(exc)
    record, warning = match.select(choice, wanted, current, candidates, store.directory(), hypervisor.name)
    if record is None and candidates and hypervisor.info.capabilities.resize:
        for memory_mib, vcpus in match.smaller_sizes(candidates, vm.memory_mib, vm.vcpus):
            smaller = vm.evolve(memory_mib=memory_mib, vcpus=vcpus)
            found, _ = match.select(choice, match.shape(smaller, hypervisor.name, templates), current, candidates,
                                    store.directory(), hypervisor.name)
            if found is not None:
                if warning:
                    logger.info("%s; growing a clone of template %r instead", warning, found.get("name"))
                return found, smaller, None
    if record is None and warning is None and choice == match.AUTO:
        logger.debug("no template has this VM's shape: %s", wanted)
    return record, vm, warning


def restore(choice: str, vm: VMSpec, hypervisor: Hypervisor, on_data: Callable, on_event: Callable,
            persist: Callable[[VM], None], attach_nic: Callable[[VM, object], None]) -> tuple[VM, AgentClient] | None:
    """Starts ``vm`` from a template when one fits: the running VM (grown to ``vm``'s size
    when the template is smaller) and its agent, connected and made its own, with ``vm``'s
    NICs hot-plugged (``persist(vm)`` records the VM as soon as it runs). None (after a
    warning when one is due) to boot cold."""
    nics, bare = vm.nics, vm.evolve(nics=())  # a NIC's MAC is device state: hot-plugged after
    try:
        record, start_as, warning = choose(choice, bare, hypervisor)
    except (RunvError, OSError) as exc:
        record, start_as, warning = None, bare, f"templates not used: {exc}"
    if record is not None:
        name = record["name"]
        try:
            clone = hypervisor.info.templates.restore(start_as, store.directory() / name, record["saved"])
        except RunvError as exc:
            clone, warning = None, f"template {name!r} not used: {exc}"
        if clone is not None:
            persist(clone)
            grown = (start_as.memory_mib, start_as.vcpus) != (vm.memory_mib, vm.vcpus)
            try:
                if grown:
                    clone.resize(vm.memory_mib, vm.vcpus)
                for nic in nics:  # before the agent is poked: the guest's PCIe hot-plug (its 100 ms settle
                    attach_nic(clone, nic)  # included) runs while the guest wakes up and is made a clone
                agent = poke(bare, name, on_data, on_event, hypervisor.info.capabilities.agent.connect_preamble,
                             vcpus=vm.vcpus if vm.vcpus > start_as.vcpus else None)
            except RunvError as exc:
                warning = f"template {name!r} not used: {exc}"
                clone.stop(force=True)
            else:
                logger.info("container %s: VM restored from template %s%s", vm.name, name,
                            f", grown to {vm.memory_mib} MiB and {vm.vcpus} vCPUs" if grown else "")
                store.note(vm.state_dir, {"template": name, **({"grown": True} if grown else {})})
                return clone, agent
    if warning:
        logger.warning("%s; booting cold", warning)
        store.note(vm.state_dir, {"warning": f"{warning}; booting cold", "named": choice != match.AUTO})
    return None


def poke(vm: VMSpec, name: str, on_data: Callable, on_event: Callable, preamble: str = "",
         vcpus: int | None = None) -> AgentClient:
    """Connects to a restored agent and makes the clone its own (clock, RNG seed; ``vcpus``
    online, when the host hot-plugged some)."""
    from runv.api.errors import AgentError
    from runv.api.sockets import connect_unix
    from runv.vm.agentclient import AgentClient

    adopted = []  # until the clone answers, the shim must not see this client's events

    try:
        sock = connect_unix(vm.agent_socket)
        if preamble:
            AgentClient.handshake(sock, preamble)
    except OSError as exc:
        raise RunvError(f"cannot connect to the restored VM's agent: {exc.strerror or exc}") from None
    client = AgentClient(sock, lambda *a: adopted and on_data(*a), lambda m: adopted and on_event(m))
    try:
        extra = {"vcpus": vcpus} if vcpus else {}
        reply = client.call("clone", timeout=POKE_TIMEOUT, seed=os.urandom(64).hex(), time=time.time(), **extra)
    except AgentError as exc:
        client.close()
        raise RunvError(f"the restored guest agent did not answer: {exc}") from None
    client.ready_info = {"event": "ready", "template": name, **{k: v for k, v in reply.items() if k not in ("id", "ok")}}
    bringup.check_agent(client, vm)
    client.ready.set()
    adopted.append(True)
    return client

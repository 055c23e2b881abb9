"""Bringing a container's VM up: its VMSpec, checked against what the hypervisor can do,
booted (or restored from a template), the agent connected and the rootfs mounted.

The guest's mounts are built here from the hypervisor's capabilities: a storage plugin
names a share by tag and a disk by serial, and this module turns them into what the
guest mounts (9p, virtio-fs, a device path), so no plugin hard-codes a transport.

The VM's size comes from the container's ``linux.resources`` (:mod:`runv.vm.sizing`),
and the shim moves into the container's ``linux.cgroupsPath`` on the host before the VMM
starts, which then makes its own cgroup there (:mod:`runv.api.vmmcgroup`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runv.api.errors import RunvError
from runv.api.frozen import to_json
from runv.api.hypervisor import Capabilities
from runv.api.vm import SERIAL, SHARE, GuestMount, StorageAttachment, Userland, VMSpec
from runv.log import logger

if TYPE_CHECKING:
    from runv.api.container import Container
    from runv.api.hypervisor import VM
    from runv.hooks import Hooks
    from runv.settings import Settings
    from runv.vm.agentclient import AgentClient

AGENT_TIMEOUT = 120.0  # seconds from VMM start to agent ready (TCG on a loaded 2-core host)
CONSOLE_TAIL = 15  # console lines quoted when a VM dies during boot
GUEST_DEVICES = "io.runv.guest-devices"  # "true": the container's /dev is the VM's devtmpfs


def kernel_args(debug: bool, caps: Capabilities) -> tuple[str, ...]:
    """The kernel arguments of every runv VM (a template's too: they are part of its shape)."""
    return ("panic=-1", "rdinit=/init", *caps.agent.kernel_args()) + (("runv.debug",) if debug else ("quiet",))


def base_vm(settings: Settings, caps: Capabilities, name: str, state_dir: Path, config: dict | None = None,
            **fields) -> VMSpec:
    """The VMSpec every runv VM starts from; ``fields`` add devices or change sizes. A
    hypervisor that resizes VMs gets the ``[vm]`` maxima (``config``: runv.vm.sizing.settings(),
    read here when not given) as its hot-plug ceilings."""
    if caps.resize:
        from runv.vm import sizing

        config = config or sizing.settings()
        fields = {"max_memory_mib": config["max_memory_mib"], "max_vcpus": config["max_vcpus"], **fields}
    if caps.shared_fs is not None:  # the pod directory: how containers that join this VM bring their files
        from runv.vm import podshare

        fields["shares"] = (*fields.get("shares", ()), podshare.share(state_dir))
    userland = settings.userland() if caps.userland else None
    return VMSpec(
        name=name,
        state_dir=state_dir,
        kernel=Path(settings.kernel),
        initrd=Path(settings.initrd),
        userland=Userland(image=Path(userland[0]), initrd=Path(userland[1])) if userland else None,
        agent_socket=state_dir / "agent.sock",
        console_log=state_dir / "console.log",
        kernel_args=kernel_args(settings.debug, caps),
        debug=settings.debug,
        **fields,
    )


def attach_storage(container: Container, hooks: Hooks, storage: str) -> StorageAttachment:
    """The container's volumes staged, the mount points of a read-only rootfs made, its
    storage attached: what its VM (or the VM it joins) is given of its files."""
    from runv.vm import mountpoints, volumes

    shares, mounts, host_binds = volumes.plan(container.spec.mounts, container.state_dir / "volumes")
    volumes.stage(host_binds)
    if container.spec.root.readonly:  # the guest cannot make them in a read-only share
        mountpoints.make(container.rootfs, container.spec.mounts)
    attachment = hooks.attach_storage(container=container)
    if attachment is None:
        raise RunvError(f"storage plugin {storage!r} attached nothing for container {container.id}")
    return attachment.plus(shares=shares, mounts=mounts)


def vm_size(container: Container, config: dict) -> tuple[int, int]:
    """The memory (MiB) and vCPUs of the container's VM, from its ``linux.resources`` as
    the guest applies them (``confinement["resources"]``) and ``[vm]`` (``config``)."""
    from runv.vm import sizing

    source = str(container.bundle / "config.json")
    return sizing.vm_size(container.spec.confinement.get("resources", {}), source, config)


def enter_cgroups_path(container: Container, vcpus: int | None = None) -> None:
    """Moves this process (the shim) into the container's ``linux.cgroupsPath`` on the
    host, made where missing, with the container's CPU and pids limits there when it
    runs a VM of ``vcpus`` (a pod member's shim runs none); nothing when the spec has none."""
    from runv.vm import cgroupspath

    value = container.spec.linux.get("cgroupsPath") or ""
    source = str(container.bundle / "config.json")
    if not isinstance(value, str):
        raise RunvError(f"{source}: linux.cgroupsPath must be a string, not {value!r}")
    path = cgroupspath.parse_path(value, source)
    if path:
        limits = {} if vcpus is None else {"resources": container.spec.linux.get("resources") or {}, "vcpus": vcpus}
        cgroupspath.place(container.state_dir, path, os.getpid(), **limits)


def container_vm(settings: Settings, caps: Capabilities, hooks: Hooks, container: Container,
                 attachment: StorageAttachment) -> VMSpec:
    """The container's VM: its size, its storage, then what the network and other plugins
    add; the shim is in the container's cgroupsPath first, the pod directory made."""
    from runv.vm import sizing

    config = sizing.settings()  # the config file and the host's size, read once
    memory_mib, vcpus = vm_size(container, config)
    enter_cgroups_path(container, vcpus)
    shares = attachment.shares
    if caps.shared_fs is not None:  # every share goes through the pod directory: the VM has that one
        from runv.vm import podshare

        podshare.make_dir(container.state_dir)
        trees = podshare.copies(shares)
        try:
            podshare.attach(container.state_dir, container.id, trees)
        finally:
            for _, tree in trees:
                os.close(tree)
        shares = ()
    vm = base_vm(settings, caps, container.id, container.state_dir, config, shares=shares,
                 disks=attachment.disks, memory_mib=memory_mib, vcpus=vcpus)
    for extra in hooks.configure_net(container=container):
        vm = vm.with_contribution(extra)
    for extra in hooks.prepare_vm(container=container, vm=vm):
        vm = vm.with_contribution(extra)
    return vm


def served_netns(container: Container) -> list[int] | None:
    """The (device, inode) of the network namespace the container's VM serves (the one
    config.json names, else the shim's own), which later containers may join; None for the host's."""
    from runv.api.container import netns_path
    from runv.vm import pods

    found = pods.identity(netns_path(container.spec.linux) or "/proc/self/ns/net")
    return None if found == pods.host_netns() else found


def check_vm(vm: VMSpec, caps: Capabilities, hypervisor: str) -> None:
    """Refuses, in one line, a share, disk or NIC the hypervisor cannot honour."""
    if vm.shares and caps.shared_fs is None:
        share = vm.shares[0]
        raise RunvError(f"hypervisor {hypervisor!r} cannot share host directories with a VM, and container {vm.name} "
                        f"needs {share.path} as share {share.tag!r}: use a storage mode that gives the rootfs as a "
                        f"disk (io.runv.storage.mode=block) and no directory volumes")
    for disk in vm.disks:
        if disk.format not in caps.disk_formats:
            takes = ", ".join(caps.disk_formats) or "no disks: use a storage mode that shares the rootfs"
            raise RunvError(f"hypervisor {hypervisor!r} cannot attach {disk.format} disks ({disk.path}); it takes {takes}")
    if caps.disk_prefix and len(vm.disks) > 26:
        raise RunvError(f"hypervisor {hypervisor!r} names disks by letter: at most 26, not {len(vm.disks)}")
    if vm.nics and not caps.nics:
        raise RunvError(f"hypervisor {hypervisor!r} cannot give a VM network interfaces, and the network namespace of "
                        f"container {vm.name} has {len(vm.nics)}: use another hypervisor, or a namespace without them")


def guest_mount(entry: GuestMount, vm: VMSpec, caps: Capabilities) -> dict:
    """One mount as the agent makes it: a share as the hypervisor serves it, a disk by the
    name the guest gives it."""
    source, fstype, options = entry.source, entry.fstype, entry.options
    if fstype == SHARE:
        served = caps.shared_fs
        share = next((s for s in vm.shares if s.tag == source), None)
        if served is None or share is None:
            raise RunvError(f"the mount of share {source!r} names no share of the VM")
        source = str(share.path) if served.source == "path" else share.tag
        fstype, options = served.fstype, ",".join(filter(None, [served.options, options]))
    elif source.startswith(SERIAL) and caps.disk_prefix:
        serial = source[len(SERIAL):]
        index = next((i for i, d in enumerate(vm.disks) if d.serial == serial), None)
        if index is None:
            raise RunvError(f"the mount of disk {serial!r} names no disk of the VM")
        source = caps.disk_device(index)
    return {**to_json(entry), "source": source, "fstype": fstype, "options": options}


def confinement(container: Container) -> dict:
    """What the agent's ``prepare`` applies of the container's spec (runv.oci.security.parse_linux),
    its ``linux.seccomp`` compiled here (runv.oci.seccomp): before its VM boots, so a profile
    libseccomp refuses fails ``create`` at once."""
    import base64

    config = {**container.spec.confinement, "id": container.id}  # the id names its guest cgroup
    if config.get("seccomp"):
        from runv.oci.seccomp import compile_bpf

        try:
            config["seccomp"] = {"bpf": base64.b64encode(compile_bpf(config["seccomp"])).decode()}
        except RunvError as exc:
            raise RunvError(f"{container.bundle / 'config.json'}: {exc}") from None
    return config


def prepare_request(container: Container, rootfs: dict, mounts: list[dict], confined: dict) -> dict:
    """The agent's ``prepare``: the rootfs, the mount plan around it (entries as
    :func:`guest_mount` gives them), hostname and /dev, and what the container's namespaces
    get from ``linux`` (runv.oci.security.parse_linux)."""
    return {
        "rootfs": {key: rootfs[key] for key in ("source", "fstype", "options", "readonly")},
        "mounts": mounts,
        "hostname": container.spec.hostname,
        "guest_devices": container.annotations.get(GUEST_DEVICES) == "true",
        "confinement": confined,  # confinement(container)
    }


def vm_prepare_request(container: Container, attachment: StorageAttachment, vm: VMSpec, caps: Capabilities,
                       confined: dict) -> dict:
    """``prepare`` for the container that booted ``vm``: its storage as the hypervisor
    serves it, its shares through the pod directory (:mod:`runv.vm.podshare`) when the VM has one."""
    from runv.vm import podshare

    rootfs, plan = attachment.rootfs, list(attachment.mounts)
    if any(share.tag == podshare.TAG for share in vm.shares):
        rootfs, plan = podshare.in_pod(rootfs, container.id), [podshare.guest_mount(), *podshare.plan_in_pod(plan, container.id)]
    return prepare_request(container, guest_mount(rootfs, vm, caps), [guest_mount(m, vm, caps) for m in plan], confined)


def attach_nic(vm: VM, caps: Capabilities, nic) -> None:
    """Hot-plugs a NIC a network plugin wired after boot (``sync_net``'s ``attach``)."""
    if not caps.nic_hotplug:
        raise RunvError(f"hypervisor {vm.hypervisor!r} cannot hot-plug network interfaces (NIC {nic.id})")
    vm.attach_nic(nic)


def connect_agent(vm_spec: VMSpec, vm: VM, caps: Capabilities, on_data: Callable, on_event: Callable) -> AgentClient:
    """Waits for the booted guest's agent; a VM that dies meanwhile fails with its last words."""
    from runv.api.errors import AgentError
    from runv.vm.agentclient import AgentClient

    def gone() -> str | None:
        if vm.alive():
            return None
        return f"the VM of container {vm_spec.name} exited during boot: {vm_spec.last_words(CONSOLE_TAIL)}"

    started = time.monotonic()
    try:
        agent = AgentClient.connect(vm_spec.agent_socket, on_data, on_event, timeout=AGENT_TIMEOUT, alive=gone,
                                    preamble=caps.agent.connect_preamble)
    except AgentError as exc:
        if vm.alive():  # a silent guest: its console is removed with the failed container, so quote it now
            raise AgentError(f"{exc}: {vm_spec.last_words(CONSOLE_TAIL)}") from None
        raise
    logger.debug("agent ready after %.2f s: %s", time.monotonic() - started, agent.ready_info)
    check_agent(agent, vm_spec)
    return agent


def check_agent(agent: AgentClient, vm_spec: VMSpec) -> None:
    """Refuses (closing it) an agent that speaks another protocol than this runv's: a guest
    image built by another release, such as the one before an upgrade."""
    from runv.agent.protocol import VERSION

    spoken = agent.ready_info.get("protocol", 0)
    if spoken != VERSION:
        agent.close()
        raise RunvError(f"the guest agent in {vm_spec.initrd} speaks protocol {spoken}, this runv {VERSION}: "
                        f"the guest image is another release's; run `runv guest build`")


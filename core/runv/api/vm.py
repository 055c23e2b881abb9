"""What a VM is made of, as frozen values the hooks pass to each other."""

from __future__ import annotations

from pathlib import Path

from runv.api.frozen import Frozen, field
from runv.api.tools import last_words

SHARE = "share"  # GuestMount.fstype of a Share, however the hypervisor serves it
SERIAL = "serial:"  # GuestMount.source prefix naming a Disk by its serial


class Share(Frozen):
    """A host directory the guest mounts over a shared filesystem, found by ``tag``.
    ``holds_mounts``: a directory of mount points the host fills while the VM runs (the pod
    directory): the VMM must not change the directory itself, only what is mounted below
    (with the modes those mounts have), so a VMM's jail binds it read-only on top alone."""

    tag: str
    path: Path
    readonly: bool = False
    holds_mounts: bool = False


class Disk(Frozen):
    """A host file or block device the guest sees as a virtio-blk disk with ``serial``."""

    serial: str
    path: Path
    format: str = "raw"
    readonly: bool = False


class GuestMount(Frozen):
    """One mount the agent makes: ``mount -t fstype -o options source target``.

    ``target`` is a path inside the container rootfs when ``in_rootfs``, else an absolute
    guest path mounted before the rootfs (a lower share, an upper disk); the rootfs itself
    has no target. Name shares and disks with :meth:`of_share` and :meth:`of_disk`, not by
    filesystem or device: the core turns them into what the hypervisor serves (9p,
    virtio-fs, a device path) from its :class:`~runv.api.hypervisor.Capabilities`.
    ``fstype`` ``bind`` binds a guest path.
    """

    source: str
    fstype: str
    options: str = ""
    readonly: bool = False
    target: str = ""
    in_rootfs: bool = False

    @classmethod
    def of_share(cls, tag: str, **fields) -> GuestMount:
        """The share ``tag`` (a :class:`Share` of the same VM)."""
        return cls(source=tag, fstype=SHARE, **fields)

    @classmethod
    def of_disk(cls, serial: str, fstype: str, **fields) -> GuestMount:
        """The filesystem ``fstype`` on the disk with ``serial`` (a :class:`Disk` of the same VM)."""
        return cls(source=SERIAL + serial, fstype=fstype, **fields)


class StorageAttachment(Frozen):
    """What a storage plugin adds to the VM for one container, and how the guest mounts it."""

    rootfs: GuestMount
    shares: tuple[Share, ...] = ()
    disks: tuple[Disk, ...] = ()
    data: dict = field(factory=dict)  # the plugin's own record, kept for teardown
    mounts: tuple[GuestMount, ...] = ()  # the agent's mount plan around the rootfs (in order)

    def plus(self, shares: tuple[Share, ...] = (), mounts: tuple[GuestMount, ...] = ()) -> StorageAttachment:
        """This attachment with more shares and mounts (the spec's volumes) appended."""
        return self.evolve(shares=self.shares + shares, mounts=self.mounts + mounts)


class Nic(Frozen):
    """A virtio-net device backed by a tap the network plugin opened (in the container's
    network namespace); the VMM inherits ``fd``, so it never enters that namespace."""

    id: str  # unique in the VM: the VMM's netdev/device id
    fd: int  # the open tap (close-on-exec in the shim; pass it to the VMM explicitly)
    mac: str
    mtu: int = 1500
    tap: str = ""  # the tap's name in the container's namespace (for VMMs that take names)


class VMContribution(Frozen):
    """What a plugin adds to any VM in ``prepare_vm`` (or ``configure_net``)."""

    kernel_args: tuple[str, ...] = ()
    shares: tuple[Share, ...] = ()
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    hotplug_slots: int = 0  # free slots to keep for devices added after boot (the max wins)


class Userland(Frozen):
    """The guest's /usr as a read-only EROFS image (``runv guest build``'s, beside the
    initrd), and the lean initrd that boots on it: it holds no Python of its own, so a VM
    booted from it must be given the image, which every VM then shares through the host's
    page cache instead of holding 19 MiB of userland in its RAM."""

    image: Path
    initrd: Path


class VMSpec(Frozen):
    """Everything a hypervisor plugin needs to boot one container's VM."""

    name: str
    state_dir: Path
    kernel: Path
    initrd: Path
    agent_socket: Path  # the host end of the agent's channel: a unix socket the VMM serves
    console_log: Path  # where the guest's console goes (and the VMM's stderr)
    memory_mib: int = 256
    vcpus: int = 1
    # hot-plug ceilings (VM.resize, for `runv update`); equal to the boot size (or 0): none
    max_memory_mib: int = 0
    max_vcpus: int = 0
    kernel_args: tuple[str, ...] = ()
    shares: tuple[Share, ...] = ()
    disks: tuple[Disk, ...] = ()
    debug: bool = False
    nics: tuple[Nic, ...] = ()
    hotplug_slots: int = 0
    # for a hypervisor whose Capabilities.userland says it maps the guest's userland image
    # into the guest with DAX (virtio-pmem): boot ``userland.initrd`` instead of ``initrd``
    userland: Userland | None = None

    def last_words(self, lines: int = 5) -> str:
        """The last lines the VM printed (its console and the VMM's stderr), as one line."""
        return last_words(self.console_log, lines)

    def with_contribution(self, extra: VMContribution) -> VMSpec:
        return self.evolve(
            kernel_args=self.kernel_args + extra.kernel_args,
            shares=self.shares + extra.shares,
            disks=self.disks + extra.disks,
            nics=self.nics + extra.nics,
            hotplug_slots=max(self.hotplug_slots, extra.hotplug_slots),
        )


def attachment_from_json(data: dict) -> StorageAttachment:
    return StorageAttachment(
        rootfs=GuestMount(**data["rootfs"]),
        shares=tuple(Share(s["tag"], Path(s["path"]), s["readonly"], s.get("holds_mounts", False)) for s in data["shares"]),
        disks=tuple(Disk(d["serial"], Path(d["path"]), d["format"], d["readonly"]) for d in data["disks"]),
        data=data["data"],
        mounts=tuple(GuestMount(**m) for m in data.get("mounts", ())),
    )


class GuestModules(Frozen):
    """Kernel modules a plugin needs in the guest image (its ``guest_modules`` hook), by name.
    ``at_boot``: loaded by the guest's ``/init`` at every boot, in this order after their
    dependencies (device drivers and whatever must be there before the agent runs: no udev
    loads a driver when a device appears); ``on_demand``: shipped, and loaded by the kernel
    when a mount or a device-mapper table first asks for them (filesystems, dm targets)."""

    at_boot: tuple[str, ...] = ()
    on_demand: tuple[str, ...] = ()

    def plus(self, other: GuestModules) -> GuestModules:
        """Both plugins' modules, each once, in order."""
        return GuestModules(tuple(dict.fromkeys(self.at_boot + other.at_boot)),
                            tuple(dict.fromkeys(self.on_demand + other.on_demand)))

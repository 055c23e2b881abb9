"""The QEMU command line of a runv VM (pure functions of a :class:`runv.api.VMSpec`), and
finding QEMU: what :mod:`runv_qemu.driver` starts and a template's shape records."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from runv.api import NINEP_VIRTIO, VIRTIOFS, RunvError, VMSpec
from runv_qemu import virtiofs

BINARY = "qemu-system-x86_64"
HOTPLUG_PORT = "hotplug"  # ids of the free PCIe root ports: hotplug0, hotplug1, ...
SHARE_PORT = "share"  # ids of the PCIe root ports a template's clone gets its shares on: share0, ...
RAM_ID = "runv-ram"  # the guest RAM's memory backend (a template's stream names its RAM by it)
NINEP, VIRTIO_FS, HOTPLUG = "9p", "virtiofs", "hotplug"  # how a VM's shares are given: command()'s shares
SERVED = {NINEP: NINEP_VIRTIO, VIRTIO_FS: VIRTIOFS}
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
TCG_CODE_CACHE_MIB = 256  # -accel tcg,tb-size: ample for a kernel and the agent, and inside the cgroup
HOT_MEMORY = "hotmem"  # the id of virtio-mem's memory (runv_qemu.driver resizes it)
BLOCK_MIB = 2  # virtio-mem's block: the finest the guest's driver manages
HOTPLUG_ARGS = (
    "memhp_default_state=online_movable",  # movable: it can be unplugged again
    "swiotlb=noforce",  # hot-plug space above 4 GiB would make the kernel keep 64 MiB of bounce buffers virtio never uses
)


def binary() -> str | None:
    return shutil.which(BINARY)


def firmware(qemu: str) -> list[str]:
    """``-bios qboot.rom``, QEMU's minimal firmware (0.15 s less than SeaBIOS per cold
    boot under TCG), where the data directory of ``qemu`` (the binary's path) has it
    (Debian's qemu-system-data does); else nothing, and QEMU's default firmware."""
    rom = Path(qemu).resolve().parent.parent / "share/qemu/qboot.rom"
    return ["-bios", "qboot.rom"] if rom.is_file() else []


def missing_binary() -> str | None:
    """Why QEMU cannot be started at all, or None."""
    if binary() is None:
        return f"{BINARY} is not installed: apt-get install qemu-system-x86"
    return None


def opt(value: str | Path) -> str:
    """A value inside a QEMU ``-option key=value,...`` list (commas are doubled)."""
    return str(value).replace(",", ",,")


def local(path: Path, state_dir: Path) -> str:
    """``path`` relative to the state directory when it lives there (short socket paths)."""
    try:
        return str(path.relative_to(state_dir))
    except ValueError:
        return str(path)


def code_cache_mib(accel: str) -> int:
    """The translated-code cache QEMU may fill (counted in its cgroup): TCG's, bounded, or none."""
    return TCG_CODE_CACHE_MIB if accel == "tcg" else 0


def accel_option(accel: str) -> str:
    """``-accel``'s value: TCG with its code cache bounded (QEMU's default is 1 GiB)."""
    return f"tcg,tb-size={TCG_CODE_CACHE_MIB}" if accel == "tcg" else accel


def shares_over() -> str:
    """How this host's QEMU VMs get their shares when they boot: virtio-fs, or 9p where there
    is no virtiofsd or runv's config file says so (``[qemu] shared_fs = "9p"``)."""
    from runv.api.config import config_path, section

    wanted = section("qemu").get("shared_fs", VIRTIO_FS)
    if wanted not in SERVED:
        raise RunvError(f"{config_path()}: [qemu] shared_fs must be {VIRTIO_FS!r} or {NINEP!r}, not {wanted!r}")
    return VIRTIO_FS if wanted == VIRTIO_FS and virtiofs.binary() else NINEP


def memory_args(vm: VMSpec) -> list[str]:
    """The guest RAM as shared memory, a memfd: a file server can map it (virtio-fs) and a
    template's stream names it (RAM_ID); the pages the guest frees go back to the host."""
    return ram_args(f"memory-backend-memfd,id={RAM_ID},size={vm.memory_mib}M,share=on", report_free=True)


def ram_args(backend: str, report_free: bool) -> list[str]:
    """The guest RAM on ``backend`` (its id RAM_ID) and a balloon that never inflates: with
    ``report_free`` the guest reports the free 2 MiB blocks it has had for 2 s, and QEMU
    punches them out of the backend (free-page-reporting). Only for RAM of the VM's own: QEMU
    7.2 punches the backing *file* even where it is mapped private (a clone of a shared template)."""
    reporting = "on" if report_free else "off"
    return ["-object", backend, "-machine", f"memory-backend={RAM_ID}",
            "-device", f"virtio-balloon-pci,id=balloon,free-page-reporting={reporting}"]


def command(vm: VMSpec, accel: str, cpu: str | None = None, fds: tuple[int, ...] | None = None, shares: str = NINEP,
            fs_fds: Sequence[int] = (), memory: Sequence[str] | None = None) -> list[str]:
    """The QEMU command line for ``vm``; ``fds``: the listening QMP and agent sockets it
    inherits (None: placeholders, for a template's shape); ``shares``: NINEP (QEMU's 9p
    server), VIRTIO_FS (a virtiofsd each, whose connected sockets are ``fs_fds``) or
    HOTPLUG (a free PCIe port each, to hot-plug them after a restore); ``memory``: the guest
    RAM's backend (default :func:`memory_args`)."""
    qmp_fd, agent_fd = fds or ("QMP", "AGENT")
    qemu = binary() or BINARY
    args = [
        qemu,
        "-name", f"runv-{vm.name}",
        "-machine", "q35", "-accel", accel_option(accel), *firmware(qemu),
        "-m", memory_option(vm),
        "-smp", str(vm.vcpus) + (f",maxcpus={vm.max_vcpus}" if vm.max_vcpus > vm.vcpus else ""),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-sandbox", SANDBOX,
        "-kernel", str(vm.kernel),
        "-initrd", str(vm.userland.initrd if vm.userland else vm.initrd),
        "-append", " ".join(("console=ttyS0",) + vm.kernel_args + (HOTPLUG_ARGS if hot_memory(vm) else ())),
        "-chardev", f"file,id=console,path={opt(local(vm.console_log, vm.state_dir))},append=on",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,fd={qmp_fd},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent,fd={agent_fd},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=agent,name=org.runv.agent",
        # the host's entropy: without it the guest's CRNG waits for jitter entropy, and its
        # first reader (Python's start, hashing's seed) for it, ≈1 s of a boot under TCG
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
    ]
    if cpu:
        args += ["-cpu", cpu]
    args += list(memory_args(vm) if memory is None else memory)
    for index, share in enumerate(vm.shares):  # the guest mounts them as the VM's shared_fs() says
        if shares == NINEP:
            args += ninep_backend(index, share) + ["-device", f"virtio-9p-pci,fsdev=fs{index},mount_tag={share.tag}"]
        elif shares == VIRTIO_FS:
            args += ["-chardev", f"socket,id=fs{index},fd={fs_fds[index]}",
                     "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={share.tag}"]
        else:
            args += ["-device", f"pcie-root-port,id={SHARE_PORT}{index},bus=pcie.0,chassis={vm.hotplug_slots + index + 1}"]
    for index, disk in enumerate(vm.disks):
        readonly = ",readonly=on" if disk.readonly else ""
        args += [
            "-drive", f"file={opt(disk.path)},format={disk.format},if=none,id=disk{index}{readonly}",
            "-device", f"virtio-blk-pci,drive=disk{index},serial={disk.serial}",
        ]
    for nic in vm.nics:  # the tap fds are inherited (start passes them): QEMU stays in its namespace
        args += [
            "-netdev", f"tap,id={nic.id},fd={nic.fd}",
            "-device", f"virtio-net-pci,netdev={nic.id},id=dev-{nic.id},mac={nic.mac}",
        ]
    for index in range(vm.hotplug_slots):  # q35's root bus cannot hot-plug: free root ports can
        args += ["-device", f"pcie-root-port,id={HOTPLUG_PORT}{index},bus=pcie.0,chassis={index + 1}"]
    if vm.userland:  # read-only, shared: the host's page cache of the image, once for every VM (DAX in the guest)
        args += ["-object", f"memory-backend-file,id=userland,mem-path={opt(vm.userland.image)},size={userland_mib(vm)}M,"
                            "share=on,readonly=on",
                 "-device", "virtio-pmem-pci,memdev=userland,id=userland-dev"]
    if hot_memory(vm):  # reserved address space only (reserve=off): RAM is used once plugged; shared, as the rest
        args += ["-object", f"memory-backend-memfd,id={HOT_MEMORY},size={hot_memory(vm)}M,share=on,reserve=off",
                 "-device", f"virtio-mem-pci,id={HOT_MEMORY}-dev,memdev={HOT_MEMORY},requested-size=0,block-size={BLOCK_MIB}M"]
    return args


def ninep_backend(index: int, share) -> list[str]:
    """QEMU's 9p server for ``share``, as ``fs{index}`` (passthrough: the guest's owners and
    modes land on the host; what a guest must not make there, the jail's filter refuses)."""
    readonly = ",readonly=on" if share.readonly else ""
    return ["-fsdev", f"local,id=fs{index},path={opt(share.path)},security_model=passthrough,multidevs=remap{readonly}"]


def size_record(vm: VMSpec, accel: str) -> dict:
    """What :meth:`QemuVM.resize` needs to know of the VM's boot size and ceilings."""
    return {"memory_mib": vm.memory_mib, "max_memory_mib": vm.memory_mib + hot_memory(vm), "vcpus": vm.vcpus,
            "max_vcpus": max(vm.vcpus, vm.max_vcpus), "code_cache_mib": code_cache_mib(accel)}


def hot_memory(vm: VMSpec) -> int:
    """MiB of virtio-mem the VM can be grown by (0: none), in whole blocks."""
    return max(0, vm.max_memory_mib - vm.memory_mib) // BLOCK_MIB * BLOCK_MIB


def userland_mib(vm: VMSpec) -> int:
    """MiB of the guest's userland image (whole 2 MiB pages, as runv guest build makes it); 0: none."""
    return os.stat(vm.userland.image).st_size >> 20 if vm.userland else 0


def memory_option(vm: VMSpec) -> str:
    """``-m``: the boot RAM, and room for the memory devices (virtio-mem's, the userland's)."""
    devices = hot_memory(vm) + userland_mib(vm)
    return f"{vm.memory_mib}M,maxmem={vm.memory_mib + devices}M" if devices else str(vm.memory_mib)

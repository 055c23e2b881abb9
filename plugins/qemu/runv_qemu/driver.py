"""Starting and controlling QEMU for a runv VM; shared by the ``qemu`` (KVM) and ``tcg`` plugins.

QEMU runs as a child of the shim, in the container's state directory (so its socket
paths stay short), with its stderr and the guest console appended to ``console.log``.
It is controlled through QMP with ``qemu.qmp``.

It is jailed (docs/security.md): started through :mod:`runv.api.jail` (parent-death
signal, its own cgroup with limits sized from the VM, its own mount namespace with ``/`` a
tmpfs holding only what it needs, no_new_privs, a minimal capability bounding set, a
seccomp filter against setuid bits) and with QEMU's own ``-sandbox`` (:data:`SANDBOX`).
Its two sockets (QMP, the agent's) are made by the host and passed as listening
descriptors: the jail has no writable directory to make them in.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from runv.api import VM, Nic, RunvError, VMSpec, await_start, connect_unix, jail, process_start_time, socket_name, stop_process, vmmcgroup

BINARY = "qemu-system-x86_64"
QMP_SOCKET = "qmp.sock"
START_TIMEOUT = 20.0
QUIT_TIMEOUT = 5.0
HOTPLUG_PORT = "hotplug"  # ids of the free PCIe root ports: hotplug0, hotplug1, ...
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
TCG_CODE_CACHE_MIB = 256  # -accel tcg,tb-size: ample for a kernel and the agent, and inside the cgroup
JAIL_DIR = "jail"  # in the state directory: the (empty) mount point of the jail's tmpfs
# Resizing (VM.resize): memory by virtio-mem (plugs and unplugs in blocks, as the guest
# agrees; measured in docs/resources.md), vCPUs by CPU hot-plug on q35's ACPI
HOT_MEMORY = "hotmem"
HOT_MEMORY_PATH = f"/machine/peripheral/{HOT_MEMORY}-dev"
HOT_CPU_PATH = "/machine/peripheral/vcpu"  # the hot-plugged vCPUs' QOM paths (ids vcpuN)
BLOCK_MIB = 2  # virtio-mem's block: the finest the guest's driver manages
HOTPLUG_ARGS = (
    "memhp_default_state=online_movable",  # movable: it can be unplugged again
    "swiotlb=noforce",  # hot-plug space above 4 GiB would make the kernel keep 64 MiB of bounce buffers virtio never uses
)
OVERCOMMIT = ("/proc/sys/vm/overcommit_memory",)  # read by QEMU for the hot memory's reserve=off
RESIZE_TIMEOUT = 10.0  # seconds for the guest to take or give back memory or a vCPU


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


def command(vm: VMSpec, accel: str, cpu: str | None = None, fds: tuple[int, ...] | None = None) -> list[str]:
    """The QEMU command line for ``vm``; ``fds``: the listening QMP and agent sockets it
    inherits (None: placeholders, for a template's shape)."""
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
        "-initrd", str(vm.initrd),
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
    for index, share in enumerate(vm.shares):  # the guest mounts them as NINEP_VIRTIO says
        readonly = ",readonly=on" if share.readonly else ""
        args += [
            "-fsdev", f"local,id=fs{index},path={opt(share.path)},security_model=passthrough,multidevs=remap{readonly}",
            "-device", f"virtio-9p-pci,fsdev=fs{index},mount_tag={share.tag}",
        ]
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
    if hot_memory(vm):  # reserved address space only (reserve=off): RAM is used once plugged
        args += ["-object", f"memory-backend-ram,id={HOT_MEMORY},size={hot_memory(vm)}M,reserve=off",
                 "-device", f"virtio-mem-pci,id={HOT_MEMORY}-dev,memdev={HOT_MEMORY},requested-size=0,block-size={BLOCK_MIB}M"]
    return args


def size_record(vm: VMSpec, accel: str) -> dict:
    """What :meth:`QemuVM.resize` needs to know of the VM's boot size and ceilings."""
    return {"memory_mib": vm.memory_mib, "max_memory_mib": vm.memory_mib + hot_memory(vm), "vcpus": vm.vcpus,
            "max_vcpus": max(vm.vcpus, vm.max_vcpus), "code_cache_mib": code_cache_mib(accel)}


def hot_memory(vm: VMSpec) -> int:
    """MiB of virtio-mem the VM can be grown by (0: none), in whole blocks."""
    return max(0, vm.max_memory_mib - vm.memory_mib) // BLOCK_MIB * BLOCK_MIB


def memory_option(vm: VMSpec) -> str:
    return f"{vm.memory_mib}M,maxmem={vm.memory_mib + hot_memory(vm)}M" if hot_memory(vm) else str(vm.memory_mib)


def listen(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` (any length), made by the host for the VMM."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_name(path) as name:
            sock.bind(name)
        sock.listen(8)
    except OSError as exc:
        sock.close()
        raise RunvError(f"cannot make the VM's socket {path}: {exc.strerror}") from None
    return sock


def greeted(path: Path, timeout: float) -> bool:
    """Whether QMP at ``path`` says hello within ``timeout`` (QEMU is up and serving)."""
    try:
        with connect_unix(path) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b'{"QMP"')
    except OSError:
        return False


def start(vm: VMSpec, plugin: str, accel: str, cpu: str | None = None, extra: Sequence[str] = (), cls: type[QemuVM] | None = None,
          binds: Sequence[jail.Bind] = ()) -> QemuVM:
    """Starts QEMU jailed and returns once QMP answers (as a ``cls``, default QemuVM);
    fails with QEMU's own words, leaving no cgroup behind. ``extra`` goes at the end of the
    command line (templates: memory backend, -incoming), ``binds`` are what it needs in the
    jail beyond the VM's own files."""
    program = binary() or BINARY
    cgroup = vmmcgroup.for_vm(vm.state_dir)
    cgroup.create(*vmmcgroup.limits(vm.memory_mib, vm.vcpus, code_cache_mib(accel)))
    root = vm.state_dir / JAIL_DIR
    qmp = vm.state_dir / QMP_SOCKET
    try:
        root.mkdir(exist_ok=True)
        sockets = [listen(qmp), listen(vm.agent_socket)]
        try:
            argv = command(vm, accel, cpu, fds=tuple(s.fileno() for s in sockets)) + list(extra)
            jail_binds = jail.vm_binds(vm, program, readonly=OVERCOMMIT if hot_memory(vm) else ()) + list(binds)
            jailed = jail.command(argv, root=root, cwd=vm.state_dir, binds=jail_binds,
                                  cgroups=cgroup.procs(), kvm=accel == "kvm", fd_dir=bool(vm.shares))
            with open(vm.console_log, "ab") as log:
                proc = subprocess.Popen(jailed, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        pass_fds=[nic.fd for nic in vm.nics] + [s.fileno() for s in sockets])
        finally:
            for sock in sockets:
                sock.close()
        await_start(proc, lambda: greeted(qmp, 1.0), vm.console_log, BINARY, START_TIMEOUT)
    except BaseException:
        cgroup.remove()
        _remove_jail_dir(root)
        raise
    return (cls or QemuVM)(plugin, proc.pid, process_start_time(proc.pid),
                  {"qmp": str(qmp), "argv": argv, "hotplug_slots": vm.hotplug_slots, "console_log": str(vm.console_log),
                   "size": size_record(vm, accel),
                   "cgroup": cgroup.record(), "jail": str(root)})


def _remove_jail_dir(root: Path) -> None:
    try:
        root.rmdir()
    except OSError:
        pass  # gone already


async def _execute(path: str, commands: list[tuple[str, dict | None]], fd: int | None = None) -> list:
    from qemu.qmp import QMPClient

    client = QMPClient("runv")
    with socket_name(path) as name:
        await asyncio.wait_for(client.connect(name), 5)
    try:
        if fd is not None:
            client.send_fd_scm(fd)
        return [await client.execute(cmd, args) for cmd, args in commands]
    finally:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - QEMU may quit as it answers
            pass


class QemuVM(VM):
    """A QEMU process driven over QMP (``data["qmp"]``: its socket)."""

    def qmp(self, *commands: str | tuple[str, dict | None], fd: int | None = None) -> list:
        """Runs QMP commands (a name, or a name and its arguments); raises RunvError when
        QEMU does not answer or refuses. ``fd`` is sent first with SCM_RIGHTS (``getfd``)."""
        calls = [(c, None) if isinstance(c, str) else c for c in commands]
        try:
            return asyncio.run(_execute(self.data["qmp"], calls, fd))
        except Exception as exc:  # noqa: BLE001 - qemu.qmp raises many kinds
            names = ", ".join(c[0] for c in calls)
            raise RunvError(f"QMP {names} failed for VM pid {self.pid}: {exc or type(exc).__name__}") from None

    def status(self) -> dict:
        """QMP ``query-status`` and ``query-kvm`` in one: ``{"status": ..., "running": ..., "kvm": {...}}``."""
        run_state, kvm = self.qmp("query-status", "query-kvm")
        return {**run_state, "kvm": kvm}

    def quit(self) -> None:
        """Asks QEMU to exit (QMP ``quit``)."""
        self.qmp("quit")

    def stop(self, force: bool = False) -> None:
        """Asks QEMU to quit (or kills it), waits for it to be gone, and removes its cgroup
        (killing anything left in it) and the jail's mount point."""
        stop_process(self.pid, self.start_time, ask=self.quit, grace=QUIT_TIMEOUT, force=force)
        if "cgroup" in self.data:
            vmmcgroup.from_record(self.data["cgroup"]).remove()
            _remove_jail_dir(Path(self.data["jail"]))

    def pause(self) -> None:
        self.qmp("stop")

    def resume(self) -> None:
        self.qmp("cont")

    def resize(self, memory_mib: int, vcpus: int) -> None:
        """Plugs or unplugs virtio-mem to ``memory_mib`` and hot-plugs or unplugs vCPUs to
        ``vcpus``, between the boot size and the ceilings the VM booted with (``data["size"]``).
        The VMM's cgroup limits rise before the VM grows and fall once it has shrunk."""
        size = self.data.get("size") or {}
        base, most = size.get("memory_mib", 0), size.get("max_memory_mib", 0)
        fewest, cpus = size.get("vcpus", 1), size.get("max_vcpus", 1)
        if not (base <= memory_mib <= most and fewest <= vcpus <= cpus):
            raise RunvError(f"VM pid {self.pid} can have {base} to {most} MiB and {fewest} to {cpus} vCPUs, not "
                            f"{memory_mib} MiB and {vcpus} (the ceilings are set at boot: [vm] in runv's config file)")
        target = -(-(memory_mib - base) // BLOCK_MIB) * BLOCK_MIB
        plugged, slots = self.plugged_memory(), self.cpu_slots()
        used = [slot for slot in slots if "qom-path" in slot]
        cgroup = vmmcgroup.from_record(self.data["cgroup"]) if "cgroup" in self.data else None
        code_cache = size.get("code_cache_mib", 0)
        if cgroup is not None:
            cgroup.set_limits(*vmmcgroup.limits(base + max(target, plugged), max(vcpus, len(used)), code_cache))
        if target != plugged:
            self.qmp(("qom-set", {"path": HOT_MEMORY_PATH, "property": "requested-size", "value": target << 20}))
            self._wait(lambda: self.plugged_memory() == target,
                       lambda: f"the guest has {base + self.plugged_memory()} MiB, not {base + target}")
        added = sorted((s for s in used if s["qom-path"].startswith(HOT_CPU_PATH)), key=lambda s: s["props"]["core-id"])
        for slot in sorted((s for s in slots if "qom-path" not in s), key=lambda s: s["props"]["core-id"])[: vcpus - len(used)]:
            self.qmp(("device_add", {"driver": slot["type"], "id": f"vcpu{slot['props']['core-id']}", **slot["props"]}))
        for slot in added[len(added) - (len(used) - vcpus):] if vcpus < len(used) else []:
            self.qmp(("device_del", {"id": slot["qom-path"].rsplit("/", 1)[1]}))
        self._wait(lambda: len([s for s in self.cpu_slots() if "qom-path" in s]) == vcpus,
                   lambda: f"the guest has {len([s for s in self.cpu_slots() if 'qom-path' in s])} vCPUs, not {vcpus}")
        if cgroup is not None:
            cgroup.set_limits(*vmmcgroup.limits(base + target, vcpus, code_cache))

    def plugged_memory(self) -> int:
        """MiB of virtio-mem the guest has plugged (0 without the device)."""
        size = self.data.get("size") or {}
        if size.get("max_memory_mib", 0) <= size.get("memory_mib", 0):
            return 0
        (plugged,) = self.qmp(("qom-get", {"path": HOT_MEMORY_PATH, "property": "size"}))
        return plugged >> 20

    def cpu_slots(self) -> list[dict]:
        """QMP's vCPU slots; those in use have a ``qom-path`` (hot-plugged ones under HOT_CPU_PATH)."""
        return self.qmp("query-hotpluggable-cpus")[0]

    def _wait(self, done, failure) -> None:
        deadline = time.monotonic() + RESIZE_TIMEOUT
        while not done():
            if time.monotonic() > deadline:
                raise RunvError(f"VM pid {self.pid}: {failure()} after {RESIZE_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def attach_nic(self, nic: Nic) -> None:
        """Hot-plugs a virtio-net NIC on the tap ``nic.fd`` into the first free root port."""
        self.qmp(("getfd", {"fdname": nic.id}), ("netdev_add", {"type": "tap", "id": nic.id, "fd": nic.id}), fd=nic.fd)
        errors = []
        for index in range(self.data.get("hotplug_slots", 0)):
            # addr 0: a root port has one slot; QEMU would take a second device at another
            # address, which the guest never scans (PCIe ports have only device 0)
            device = {"driver": "virtio-net-pci", "id": f"dev-{nic.id}", "netdev": nic.id, "mac": nic.mac, "addr": "0",
                      "bus": f"{HOTPLUG_PORT}{index}"}
            try:
                self.qmp(("device_add", device))
                return
            except RunvError as exc:
                errors.append(str(exc))
        self.qmp(("netdev_del", {"id": nic.id}))
        raise RunvError(f"no free PCIe slot to hot-plug NIC {nic.id} ({self.data.get('hotplug_slots', 0)} kept free; "
                        f"{'; '.join(errors[-1:])})")


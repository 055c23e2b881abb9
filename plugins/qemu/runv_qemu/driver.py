"""Starting and controlling QEMU for a runv VM; shared by the ``qemu`` (KVM) and ``tcg`` plugins.

QEMU runs as a child of the shim, in the container's state directory (so its socket
paths stay short), with its stderr and the guest console appended to ``console.log``.
It is controlled through QMP (:mod:`runv_qemu.qmp`).

It is jailed (docs/security.md): started through :mod:`runv.api.jail` (parent-death
signal, its own cgroup with limits sized from the VM, its own mount namespace with ``/`` a
tmpfs holding only what it needs, no_new_privs, a minimal capability bounding set, a
seccomp filter against setuid bits) and with QEMU's own ``-sandbox`` (:data:`runv_qemu.command.SANDBOX`).
Its two sockets (QMP, the agent's) are made by the host and passed as listening
descriptors: the jail has no writable directory to make them in.

Its shares go over virtio-fs, a ``virtiofsd`` each (:mod:`runv_qemu.virtiofs`), with the
guest's RAM in shared memory (a memfd) the server maps; over QEMU's own 9p server where
there is no virtiofsd. A VM started from a template gets its shares hot-plugged (the
template has a free PCIe port for each: vhost-user-fs cannot be migrated), over virtio-fs
for a private clone and 9p for a clone sharing the template's RAM (:mod:`runv_qemu.template`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from runv.api import (
    VM,
    Nic,
    RunvError,
    SharedFs,
    VMSpec,
    await_start,
    connect_unix,
    jail,
    process_start_time,
    socket_name,
    stop_process,
    vmmcgroup,
)
from runv_qemu import qmp, virtiofs
from runv_qemu.command import (
    BINARY,
    BLOCK_MIB,
    HOT_MEMORY,
    HOTPLUG,
    HOTPLUG_PORT,
    NINEP,
    SERVED,
    VIRTIO_FS,
    binary,
    code_cache_mib,
    command,
    hot_memory,
    shares_over,
    size_record,
)

QMP_SOCKET = "qmp.sock"
START_TIMEOUT = 20.0
QUIT_TIMEOUT = 5.0
JAIL_DIR = "jail"  # in the state directory: the (empty) mount point of the jail's tmpfs
# Resizing (VM.resize): memory by virtio-mem (plugs and unplugs in blocks, as the guest
# agrees; measured in docs/resources.md), vCPUs by CPU hot-plug on q35's ACPI
HOT_MEMORY_PATH = f"/machine/peripheral/{HOT_MEMORY}-dev"
HOT_CPU_PATH = "/machine/peripheral/vcpu"  # the hot-plugged vCPUs' QOM paths (ids vcpuN)
OVERCOMMIT = ("/proc/sys/vm/overcommit_memory",)  # read by QEMU for the hot memory's reserve=off
RESIZE_TIMEOUT = 10.0  # seconds for the guest to take or give back memory or a vCPU


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
          binds: Sequence[jail.Bind] = (), shares: str | None = None, memory: Sequence[str] | None = None,
          pass_fds: Sequence[int] = ()) -> QemuVM:
    """Starts QEMU jailed (and a virtiofsd per share, :mod:`runv_qemu.virtiofs`) and returns
    once QMP answers (as a ``cls``, default QemuVM); fails with QEMU's own words, leaving no
    process or cgroup behind. ``shares``: how the VM's shares are given (:func:`command`;
    default :func:`shares_over`), ``memory`` the RAM's backend; ``extra`` goes at the end of
    the command line (a template's -incoming), ``binds`` are what it needs in the jail beyond
    the VM's own files, ``pass_fds`` descriptors it inherits (and opens as /proc/self/fd/N)."""
    shares = shares or shares_over()
    if shares == NINEP and vm.shares and virtiofs.binary() is None:
        virtiofs.logger.warning("container %s: %s", vm.name, virtiofs.missing())
    program = binary() or BINARY
    cgroup = vmmcgroup.for_vm(vm.state_dir)
    cgroup.create(*vmmcgroup.limits(vm.memory_mib, vm.vcpus, code_cache_mib(accel)))
    root = vm.state_dir / JAIL_DIR
    qmp = vm.state_dir / QMP_SOCKET
    servers: list[virtiofs.Server] = []
    try:
        root.mkdir(exist_ok=True)
        if shares == VIRTIO_FS:
            servers = [virtiofs.start(vm, index, share, cgroup, root) for index, share in enumerate(vm.shares)]
        sockets = [listen(qmp), listen(vm.agent_socket)]
        fs_fds = [server.connection.fileno() for server in servers]
        try:
            argv = command(vm, accel, cpu, fds=tuple(s.fileno() for s in sockets), shares=shares, fs_fds=fs_fds,
                           memory=memory) + list(extra)
            served_here = vm if "-fsdev" in argv else vm.evolve(shares=())  # the jail holds the shares its own 9p server serves
            jail_binds = jail.vm_binds(served_here, program, readonly=OVERCOMMIT if hot_memory(vm) else ()) + list(binds)
            jailed = jail.command(argv, root=root, cwd=vm.state_dir, binds=jail_binds,
                                  cgroups=cgroup.procs(), kvm=accel == "kvm", fd_dir=bool(served_here.shares or pass_fds))
            with open(vm.console_log, "ab") as log:
                proc = subprocess.Popen(jailed, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        pass_fds=[nic.fd for nic in vm.nics] + [s.fileno() for s in sockets] + fs_fds + list(pass_fds))
        finally:
            for sock in sockets + [server.connection for server in servers]:
                sock.close()
        await_start(proc, lambda: greeted(qmp, 1.0), vm.console_log, BINARY, START_TIMEOUT)
    except BaseException:
        cgroup.remove()  # the file servers too: they are in it
        _remove_jail_dir(root)
        raise
    started = process_start_time(proc.pid)
    for server in servers:
        virtiofs.supervise(server, proc.pid, started, vm.name, vm.console_log)
    return (cls or QemuVM)(plugin, proc.pid, started,
                  {"qmp": str(qmp), "argv": argv, "hotplug_slots": vm.hotplug_slots, "console_log": str(vm.console_log),
                   "size": size_record(vm, accel), "cgroup": cgroup.record(), "jail": str(root),
                   "shared_fs": shares if shares != HOTPLUG else None, "virtiofsd": [server.record() for server in servers]})


def _remove_jail_dir(root: Path) -> None:
    try:
        root.rmdir()
    except OSError:
        pass  # gone already


class QemuVM(VM):
    """A QEMU process driven over QMP (``data["qmp"]``: its socket)."""

    def qmp(self, *commands: str | tuple[str, dict | None], fd: int | None = None) -> list:
        """Runs QMP commands (a name, or a name and its arguments); raises RunvError when
        QEMU does not answer or refuses. ``fd`` is sent first with SCM_RIGHTS (``getfd``)."""
        calls = [(c, None) if isinstance(c, str) else c for c in commands]
        try:
            return qmp.execute(self.data["qmp"], calls, fd)
        except (OSError, ValueError, qmp.QmpError) as exc:
            names = ", ".join(c[0] for c in calls)
            raise RunvError(f"QMP {names} failed for VM pid {self.pid}: {exc or type(exc).__name__}") from None

    def status(self) -> dict:
        """QMP ``query-status`` and ``query-kvm`` in one: ``{"status": ..., "running": ..., "kvm": {...}}``."""
        run_state, kvm = self.qmp("query-status", "query-kvm")
        return {**run_state, "kvm": kvm}

    def quit(self) -> None:
        """Asks QEMU to exit (QMP ``quit``)."""
        self.qmp("quit")

    def shared_fs(self) -> SharedFs | None:
        """How this VM serves its shares (``data["shared_fs"]``): virtio-fs, 9p, or none yet."""
        return SERVED.get(self.data.get("shared_fs") or "")

    def stop(self, force: bool = False) -> None:
        """Asks QEMU to quit (or kills it), waits for it to be gone (its file servers then
        exit too), and removes its cgroup (killing anything left in it) and the jail's mount point."""
        stop_process(self.pid, self.start_time, ask=self.quit, grace=QUIT_TIMEOUT, force=force)
        virtiofs.stop(self.data.get("virtiofsd", []), force)
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


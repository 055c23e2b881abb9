"""VM templates for the QEMU plugins (``tcg`` and ``qemu``): save a booted guest, start clones.

A template is two files: ``memory``, the guest RAM as a sparse file, and ``state``, QEMU's
migration stream of everything else (CPU and device state, a few hundred KB). The template
VM runs with its RAM in ``memory`` mapped shared, so when it is stopped the file *is* its
memory (the pages its guest never touched, freed or left zero are holes:
:mod:`runv_qemu.sparse`); the stream is saved with the
``x-ignore-shared`` capability, which leaves shared RAM out. A clone of a ``shared``
template (density) maps the same file **private** (``share=off``): it reads the template's
pages and copies only those it writes (copy-on-write), so idle clones share most of their
RAM. A clone of a ``private`` template (the default) gets a memfd of its own, into which
the host copies the file's data (never its holes: a page the template's guest never
touched costs the clone nothing) while QEMU starts; no page is shared between two clones
(so none between tenants), and the memfd is shared memory a file server can map
(virtio-fs). Loading the RAM through QEMU's stream instead cost every clone all of its
RAM (QEMU reads each zero page to check it, and a read allocates shared memory).

The migration stream carries device state but no host paths. So a clone is started with
the *same device set* as the template (disks by serial, hot-plug ports, agent port), each
pointing at the clone's own host paths on the command line, and the stream is loaded into
it (``-incoming defer`` + ``migrate-incoming``). Its shares are the exception: a template
has a free PCIe port for each and no share device (QEMU 7.2 cannot migrate vhost-user-fs),
and a clone gets them hot-plugged into those ports as soon as it runs: over virtio-fs for a
private clone (its RAM is a memfd a virtiofsd can map), over 9p for a shared one (its RAM
maps the template's file privately, which no file server can see) or where there is no
virtiofsd. The guest finds the device while it wakes up (the agent waits for the share's
tag at ``prepare``). :func:`shape` says which device set a VM has; a template serves only
VMs of its shape.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from runv.api import Disk, RunvError, Share, TemplateSupport, VMSpec, last_words, vmmcgroup
from runv.api.jail import Bind
from runv_qemu import command, driver, sparse, virtiofs
from runv_qemu.driver import QemuVM

MEMORY = "memory"
STATE = "state"
LOAD_TIMEOUT = 60.0
SAVE_TIMEOUT = 120.0
# of the saved files (2: a private template's stream uncompressed; 3: shares hot-plugged, the RAM in the memory file
# for private templates too); part of the shape, so older ones are stale
FORMAT = 3
# the stream leaves out shared RAM: the template's memory file, which clones get otherwise, and the userland image
IGNORE_SHARED = ("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
MIGRATION_FD = "runv-migration"  # the getfd name of the stream's descriptor: QEMU runs no commands (spawn=deny)


def _memory_args(vm: VMSpec, path: Path, share: bool, private: bool) -> list[str]:
    """The guest RAM in the file ``path``: the template's own or a private clone's memfd
    (shared), or a shared clone's private mapping of the template's. Only a private
    template's VMs report free pages: the device state a clone loads must match its
    template's, and a shared clone's reports would punch the template's file."""
    backend = (f"memory-backend-file,id={command.RAM_ID},size={vm.memory_mib}M,mem-path={command.opt(path)},"
               f"share={'on' if share else 'off'}")
    return command.ram_args(backend, report_free=private)


def _disk_size(disk: Disk) -> int:
    """The size the guest sees: a raw file's length, a qcow2's virtual size (its header)."""
    try:
        if disk.format == "qcow2":
            with open(disk.path, "rb") as f:
                header = f.read(32)
            return int.from_bytes(header[24:32], "big")
        return os.stat(disk.path).st_size
    except OSError:
        return -1


def shape(vm: VMSpec, accel: str, cpu: str | None) -> dict | None:
    """The QEMU command line of ``vm`` with every per-container value taken out (the
    device set and machine options a template must have been made with), plus the QEMU
    binary's identity and the files' format; None when ``vm`` cannot be served by a
    template (cold-plugged NICs: their MAC is device state that would come from the template)."""
    if vm.nics:
        return None
    state_dir = Path("/state")
    normal = vm.evolve(
        name="template",
        state_dir=state_dir,
        agent_socket=state_dir / command.local(vm.agent_socket, vm.state_dir),
        console_log=state_dir / command.local(vm.console_log, vm.state_dir),
        shares=tuple(Share(tag=s.tag, path=Path(f"/share{i}")) for i, s in enumerate(vm.shares)),
        disks=tuple(Disk(serial=d.serial, path=Path(f"/disk{i}"), format=d.format, readonly=d.readonly) for i, d in enumerate(vm.disks)),
    )
    binary = command.binary() or command.BINARY
    try:
        st = os.stat(binary)
        qemu = {"path": binary, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        qemu = {"path": binary}
    return {
        "argv": command.command(normal, accel, cpu, shares=command.HOTPLUG)[1:],
        "disk_sizes": [_disk_size(d) for d in vm.disks],
        "qemu": qemu,
        "format": FORMAT,
    }


class TemplatedQemuVM(QemuVM):
    """A QEMU VM that can also be saved as a template (what the QEMU plugins' VMs are)."""

    def save(self, directory: Path) -> dict:
        return save(self, directory)


class QemuTemplates(TemplateSupport):
    """Templates for one QEMU accelerator and CPU model."""

    def __init__(self, plugin: str, accel: str, cpu) -> None:
        self.plugin, self.accel, self.cpu = plugin, accel, cpu  # cpu: a callable giving the -cpu model

    def shape(self, vm: VMSpec) -> dict | None:
        return shape(vm, self.accel, self.cpu())

    def boot(self, vm: VMSpec, directory: Path, private: bool) -> QemuVM:
        """Boots ``vm`` with a free port for each share and its RAM in ``directory/memory``,
        mapped shared: once stopped, the file is its memory. (``private`` is for its clones.)"""
        memory = directory / MEMORY
        fd = os.open(memory, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, vm.memory_mib << 20)
        os.close(fd)
        booted = driver.start(vm, plugin=self.plugin, accel=self.accel, cpu=self.cpu(), cls=TemplatedQemuVM,
                              binds=[Bind(str(memory.absolute()), "file", writable=True)], shares=command.HOTPLUG,
                              memory=_memory_args(vm, memory, share=True, private=private))
        booted.data["private"] = private
        return booted

    def restore(self, vm: VMSpec, directory: Path, saved: dict) -> QemuVM:
        return restore(vm, directory, saved, plugin=self.plugin, accel=self.accel, cpu=self.cpu())


def save(vm: QemuVM, directory: Path) -> dict:
    """Stops the VM booted by :meth:`QemuTemplates.boot` and saves it into ``directory``: its
    RAM is the memory file already, its devices go into the stream."""
    private = vm.data.get("private", False)
    memory = directory / MEMORY
    state = directory / STATE
    started = time.monotonic()
    if private:  # what its guest freed (the initrd it unpacked, boot's memory) leaves the file
        sparse.await_reports(memory)
    out = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        vm.qmp(("getfd", {"fdname": MIGRATION_FD}), ("stop", None), IGNORE_SHARED,
               ("migrate", {"uri": f"fd:{MIGRATION_FD}"}), fd=out)
        deadline = time.monotonic() + SAVE_TIMEOUT
        while True:
            status = vm.qmp(("query-migrate", None))[0].get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RunvError(f"saving the template failed (migration {status}): {last_words(Path(vm.data['console_log']))}")
            time.sleep(0.02)
    finally:
        os.close(out)
    sparse.punch_zeros(memory)
    seconds = time.monotonic() - started
    os.chmod(state, 0o600)
    held = memory.stat()
    files = {STATE: state.stat().st_size, MEMORY: held.st_size}
    return {"files": files, "memory_data": held.st_blocks * 512, "private": private, "save_seconds": round(seconds, 3)}


def restore(vm: VMSpec, directory: Path, record: dict, plugin: str, accel: str, cpu: str | None) -> QemuVM:
    """Starts QEMU for ``vm`` with the template's device set and loads the template into
    it; returns once the guest runs again. Raises RunvError (QEMU's words) when it cannot."""
    private = record.get("private", False)
    state = directory / STATE
    over = command.shares_over() if private else command.NINEP  # a shared clone's RAM is no file server's to map
    extra, binds, pass_fds = ["-incoming", "defer"], [], []
    if private:  # the clone's own memory, filled from the template's while QEMU starts
        ram = os.memfd_create(command.RAM_ID, os.MFD_CLOEXEC)
        filling = threading.Thread(target=sparse.copy_data, args=(directory / MEMORY, ram), name="template-memory")
        filling.start()
        memory_args, pass_fds = _memory_args(vm, Path(f"/proc/self/fd/{ram}"), share=True, private=True), [ram]
    else:
        # writable in the jail too: QEMU 7.2 opens a memory-backend-file O_RDWR even for a
        # private mapping (its readonly=on would make the guest's RAM read-only)
        memory_args = _memory_args(vm, directory / MEMORY, share=False, private=False)
        binds = [Bind(str((directory / MEMORY).absolute()), "file", writable=True)]
    if over == command.NINEP:  # 9p's servers are QEMU's own: on its command line, their devices plugged after
        extra = [arg for index, share in enumerate(vm.shares) for arg in command.ninep_backend(index, share)] + extra
    try:
        clone = driver.start(vm, plugin=plugin, accel=accel, cpu=cpu, extra=extra, cls=TemplatedQemuVM, binds=binds,
                             shares=command.HOTPLUG, memory=memory_args, pass_fds=pass_fds)
    finally:
        if private:
            filling.join()  # QEMU reads guest memory as it loads the devices' state
            os.close(ram)
    servers = []
    if over == command.VIRTIO_FS:  # starting while the stream loads
        cgroup, jail_root = vmmcgroup.from_record(clone.data["cgroup"]), Path(clone.data["jail"])
        servers = [virtiofs.start(vm, index, share, cgroup, jail_root) for index, share in enumerate(vm.shares)]
        clone.data["virtiofsd"] = [server.record() for server in servers]
    stream = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:  # QEMU reads the stream from the host's descriptor (it opens nothing itself: the jail)
        clone.qmp(("getfd", {"fdname": MIGRATION_FD}), IGNORE_SHARED,
                  ("migrate-incoming", {"uri": f"fd:{MIGRATION_FD}"}), fd=stream)
        deadline = time.monotonic() + LOAD_TIMEOUT
        while True:
            if not clone.alive():
                raise RunvError(f"{command.BINARY} could not load the template: {vm.last_words()}")
            migration, run_state = clone.qmp(("query-migrate", None), ("query-status", None))
            if migration.get("status") == "failed":
                raise RunvError(f"{command.BINARY} could not load the template: {migration.get('error-desc', 'failed')}")
            if run_state["status"] != "inmigrate":
                break
            if time.monotonic() > deadline:
                raise RunvError(f"{command.BINARY} did not load the template within {LOAD_TIMEOUT:.0f} s")
            time.sleep(0.01)
        if not run_state["running"]:
            clone.qmp(("cont", None))
        plug_shares(clone, vm, over, servers)
    except BaseException:
        clone.stop(force=True)
        raise
    finally:
        os.close(stream)
        for server in servers:
            server.connection.close()
    return clone


def plug_shares(clone: QemuVM, vm: VMSpec, over: str, servers: list[virtiofs.Server]) -> None:
    """Hot-plugs the clone's shares into the template's free ports: a vhost-user-fs device on
    each server's connection, or a 9p device on the backend its command line has."""
    for index, share in enumerate(vm.shares):
        port = {"id": f"share-dev{index}", "bus": f"{command.SHARE_PORT}{index}", "addr": "0"}
        if over == command.VIRTIO_FS:
            chardev = {"id": f"fs{index}", "backend": {"type": "socket", "data": {
                "addr": {"type": "fd", "data": {"str": f"fs{index}"}}, "server": False}}}
            clone.qmp(("getfd", {"fdname": f"fs{index}"}), ("chardev-add", chardev),
                      ("device_add", {"driver": "vhost-user-fs-pci", "chardev": f"fs{index}", "tag": share.tag, **port}),
                      fd=servers[index].connection.fileno())
            virtiofs.supervise(servers[index], clone.pid, clone.start_time, vm.name, vm.console_log)
        else:
            clone.qmp(("device_add", {"driver": "virtio-9p-pci", "fsdev": f"fs{index}", "mount_tag": share.tag, **port}))
    clone.data["shared_fs"] = over

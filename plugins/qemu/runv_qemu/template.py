"""VM templates for the QEMU plugins (``tcg`` and ``qemu``): save a booted guest, start clones.

A template is two files: ``memory``, the guest RAM as a plain file, and ``state``, QEMU's
migration stream of everything else (CPU and device state, a few hundred KB). The template
VM runs with its RAM in ``memory`` mapped shared, so when it is stopped the file *is* its
memory; the stream is saved with the ``x-ignore-shared`` capability, which leaves shared RAM
out. A clone maps the same file **private** (``share=off``): it reads the template's pages
and copies only those it writes (copy-on-write), so idle clones share most of their RAM.
That is the ``shared`` mode (density). In the ``private`` mode (the default) the RAM goes into
the stream instead: every clone loads (and owns) all of its RAM, and no page is shared
between two clones (so none between tenants). The stream is stored as QEMU writes it
(≈100 MB for the default template): QEMU reads it straight from the file, 0.1 s less a
start than through an lz4 pipe (a third of the size on disk), measured in docs/performance.md.

The migration stream carries device state but no host paths. So a clone is started with
the *same device set* as the template (same shares by tag, disks by serial, hot-plug
ports, agent port), each pointing at the clone's own host paths on the command line, and
the stream is loaded into it (``-incoming defer`` + ``migrate-incoming``). Hot-plugging the
rootfs after the restore instead was measured at ≈7 s under TCG (PCIe native hot-plug
waits out the attention-button delay), against 0.2 s for a whole restore, so it is not
used. :func:`shape` says which device set a VM has; a template serves only VMs of its shape.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from runv.api import Disk, RunvError, Share, TemplateSupport, VMSpec, last_words
from runv.api.jail import Bind
from runv_qemu import driver
from runv_qemu.driver import QemuVM

MEMORY = "memory"
STATE = "state"
RAM_ID = "runv-ram"
LOAD_TIMEOUT = 60.0
SAVE_TIMEOUT = 120.0
FORMAT = 2  # of the saved files (2: a private template's stream uncompressed); part of the shape, so older ones are stale
MIGRATION_FD = "runv-migration"  # the getfd name of the stream's descriptor: QEMU runs no commands (spawn=deny)


def _memory_args(vm: VMSpec, path: Path, share: bool) -> list[str]:
    backend = f"memory-backend-file,id={RAM_ID},size={vm.memory_mib}M,mem-path={driver.opt(path)},share={'on' if share else 'off'}"
    return ["-object", backend, "-machine", f"memory-backend={RAM_ID}"]


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
        agent_socket=state_dir / driver.local(vm.agent_socket, vm.state_dir),
        console_log=state_dir / driver.local(vm.console_log, vm.state_dir),
        shares=tuple(Share(tag=s.tag, path=Path(f"/share{i}")) for i, s in enumerate(vm.shares)),
        disks=tuple(Disk(serial=d.serial, path=Path(f"/disk{i}"), format=d.format, readonly=d.readonly) for i, d in enumerate(vm.disks)),
    )
    binary = driver.binary() or driver.BINARY
    try:
        st = os.stat(binary)
        qemu = {"path": binary, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        qemu = {"path": binary}
    return {
        "argv": driver.command(normal, accel, cpu)[1:],
        "disk_sizes": [_disk_size(d) for d in vm.disks],
        "qemu": qemu,
        "format": FORMAT,
    }


def _ignore_shared(on: bool) -> tuple[str, dict]:
    return ("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": on}]})


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
        """Boots ``vm`` with its RAM in ``directory/memory`` (shared: once stopped, the file
        is its memory), or in anonymous memory when ``private`` (the RAM goes into the stream)."""
        extra, binds = [], []
        if not private:
            memory = directory / MEMORY
            fd = os.open(memory, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, vm.memory_mib << 20)
            os.close(fd)
            extra, binds = _memory_args(vm, memory, share=True), [Bind(str(memory.absolute()), "file", writable=True)]
        booted = driver.start(vm, plugin=self.plugin, accel=self.accel, cpu=self.cpu(), extra=extra, cls=TemplatedQemuVM,
                              binds=binds)
        booted.data["private"] = private
        return booted

    def restore(self, vm: VMSpec, directory: Path, saved: dict) -> QemuVM:
        return restore(vm, directory, saved, plugin=self.plugin, accel=self.accel, cpu=self.cpu())


def save(vm: QemuVM, directory: Path) -> dict:
    """Stops the VM booted by :meth:`QemuTemplates.boot` and saves it into ``directory``."""
    private = vm.data.get("private", False)
    memory = directory / MEMORY
    state = directory / STATE
    started = time.monotonic()
    out = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        vm.qmp(("getfd", {"fdname": MIGRATION_FD}), ("stop", None), _ignore_shared(not private),
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
    seconds = time.monotonic() - started
    os.chmod(state, 0o600)
    files = {STATE: state.stat().st_size}
    if not private:
        files[MEMORY] = memory.stat().st_size
    return {"files": files, "private": private, "save_seconds": round(seconds, 3)}


def restore(vm: VMSpec, directory: Path, record: dict, plugin: str, accel: str, cpu: str | None) -> QemuVM:
    """Starts QEMU for ``vm`` with the template's device set and loads the template into
    it; returns once the guest runs again. Raises RunvError (QEMU's words) when it cannot."""
    private = record.get("private", False)
    state = directory / STATE
    extra, binds = ["-incoming", "defer"], []
    if not private:
        # writable in the jail too: QEMU 7.2 opens a memory-backend-file O_RDWR even for a
        # private mapping (its readonly=on would make the guest's RAM read-only)
        extra = _memory_args(vm, directory / MEMORY, share=False) + extra
        binds = [Bind(str((directory / MEMORY).absolute()), "file", writable=True)]
    clone = driver.start(vm, plugin=plugin, accel=accel, cpu=cpu, extra=extra, cls=TemplatedQemuVM, binds=binds)
    stream = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:  # QEMU reads the stream from the host's descriptor (it opens nothing itself: the jail)
        clone.qmp(("getfd", {"fdname": MIGRATION_FD}), _ignore_shared(not private),
                  ("migrate-incoming", {"uri": f"fd:{MIGRATION_FD}"}), fd=stream)
        deadline = time.monotonic() + LOAD_TIMEOUT
        while True:
            if not clone.alive():
                raise RunvError(f"{driver.BINARY} could not load the template: {vm.last_words()}")
            migration, run_state = clone.qmp(("query-migrate", None), ("query-status", None))
            if migration.get("status") == "failed":
                raise RunvError(f"{driver.BINARY} could not load the template: {migration.get('error-desc', 'failed')}")
            if run_state["status"] != "inmigrate":
                break
            if time.monotonic() > deadline:
                raise RunvError(f"{driver.BINARY} did not load the template within {LOAD_TIMEOUT:.0f} s")
            time.sleep(0.01)
        if not run_state["running"]:
            clone.qmp(("cont", None))
    except BaseException:
        clone.stop(force=True)
        raise
    finally:
        os.close(stream)
    return clone

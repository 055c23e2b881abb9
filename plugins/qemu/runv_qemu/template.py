"""VM templates for the QEMU plugins (``tcg`` and ``qemu``): save a booted guest, start clones.

A template is two files: ``memory``, the guest RAM as a plain file, and ``state``, QEMU's
migration stream of everything else (CPU and device state, a few hundred KB). The template
VM runs with its RAM in ``memory`` mapped shared, so when it is stopped the file *is* its
memory; the stream is saved with the ``x-ignore-shared`` capability, which leaves shared RAM
out. A clone maps the same file **private** (``share=off``): it reads the template's pages
and copies only those it writes (copy-on-write), so idle clones share most of their RAM.
With ``compress`` the RAM goes into the stream instead, through lz4: a smaller template on
disk, but every clone loads (and owns) all of its RAM.

The migration stream carries device state but no host paths. So a clone is started with
the *same device set* as the template (same shares by tag, disks by serial, hot-plug
ports, agent port), each pointing at the clone's own host paths on the command line, and
the stream is loaded into it (``-incoming defer`` + ``migrate-incoming``). Hot-plugging the
rootfs after the restore instead was measured at ≈7 s under TCG (PCIe native hot-plug
waits out the attention-button delay), against 0.2 s for a whole restore, so it is not
used. :func:`shape` says which device set a VM has; a template serves only VMs of its shape.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import attrs

from runv.errors import RunvError
from runv.sandbox.control import socket_name
from runv.sandbox.vmspec import Disk, Share, VMHandle, VMSpec
from runv_qemu import driver

MEMORY = "memory"
STATE = "state"
RAM_ID = "runv-ram"
LOAD_TIMEOUT = 60.0
SAVE_TIMEOUT = 120.0
COMPRESSOR = "lz4"


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
    binary's identity; None when ``vm`` cannot be served by a template (cold-plugged NICs:
    their MAC is device state that would come from the template)."""
    if vm.nics:
        return None
    state_dir = Path("/state")
    normal = attrs.evolve(
        vm,
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
    }


async def _execute(path: str, commands: list[tuple[str, dict | None]]) -> list:
    from qemu.qmp import QMPClient

    client = QMPClient("runv-template")
    with socket_name(path) as name:
        await asyncio.wait_for(client.connect(name), 5)
    try:
        return [await client.execute(cmd, args) for cmd, args in commands]
    finally:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - QEMU may quit as it answers
            pass


def _qmp(handle: VMHandle, *commands: tuple[str, dict | None]) -> list:
    try:
        return asyncio.run(_execute(handle.data["qmp"], list(commands)))
    except Exception as exc:  # noqa: BLE001 - qemu.qmp raises many kinds
        names = ", ".join(c[0] for c in commands)
        raise RunvError(f"QMP {names} failed for VM pid {handle.pid}: {exc or type(exc).__name__}") from None


def _ignore_shared(on: bool) -> tuple[str, dict]:
    return ("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": on}]})


def save(vm: VMSpec, directory: Path, compress: bool, ready, plugin: str, accel: str, cpu: str | None) -> dict:
    """Boots ``vm`` with its RAM in ``directory/memory``, calls ``ready(handle)`` (which
    returns once the agent answers), stops it and saves it into ``directory``."""
    if compress and shutil.which(COMPRESSOR) is None:
        raise RunvError(f"--compress needs {COMPRESSOR}: apt-get install lz4")
    memory = directory / MEMORY
    state = directory / STATE
    extra = [] if compress else _memory_args(vm, memory, share=True)
    if not compress:
        fd = os.open(memory, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, vm.memory_mib << 20)
        os.close(fd)
    handle = driver.start(vm, plugin=plugin, accel=accel, cpu=cpu, extra=extra)
    try:
        ready(handle)
        started = time.monotonic()
        sink = f"{COMPRESSOR} -q -c > {state}" if compress else f"cat > {state}"
        _qmp(handle, ("stop", None), _ignore_shared(not compress), ("migrate", {"uri": f"exec:{sink}"}))
        deadline = time.monotonic() + SAVE_TIMEOUT
        while True:
            status = _qmp(handle, ("query-migrate", None))[0].get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RunvError(f"saving the template failed (migration {status}): {vm.last_words()}")
            time.sleep(0.02)
        seconds = time.monotonic() - started
    finally:
        driver.stop(handle, force=True)
    os.chmod(state, 0o600)
    files = {STATE: state.stat().st_size}
    if not compress:
        files[MEMORY] = memory.stat().st_size
    return {"files": files, "compress": COMPRESSOR if compress else None, "save_seconds": round(seconds, 3)}


def restore(vm: VMSpec, directory: Path, record: dict, plugin: str, accel: str, cpu: str | None) -> VMHandle:
    """Starts QEMU for ``vm`` with the template's device set and loads the template into
    it; returns once the guest runs again. Raises RunvError (QEMU's words) when it cannot."""
    compress = record.get("compress")
    state = directory / STATE
    extra = ["-incoming", "defer"]
    if not compress:
        extra = _memory_args(vm, directory / MEMORY, share=False) + extra
    source = f"{compress} -q -d -c {state}" if compress else f"cat {state}"
    handle = driver.start(vm, plugin=plugin, accel=accel, cpu=cpu, extra=extra)
    try:
        _qmp(handle, _ignore_shared(not compress), ("migrate-incoming", {"uri": f"exec:{source}"}))
        deadline = time.monotonic() + LOAD_TIMEOUT
        while True:
            if not driver.alive(handle):
                raise RunvError(f"{driver.BINARY} could not load the template: {vm.last_words()}")
            migration, run_state = _qmp(handle, ("query-migrate", None), ("query-status", None))
            if migration.get("status") == "failed":
                raise RunvError(f"{driver.BINARY} could not load the template: {migration.get('error-desc', 'failed')}")
            if run_state["status"] != "inmigrate":
                break
            if time.monotonic() > deadline:
                raise RunvError(f"{driver.BINARY} did not load the template within {LOAD_TIMEOUT:.0f} s")
            time.sleep(0.01)
        if not run_state["running"]:
            _qmp(handle, ("cont", None))
    except BaseException:
        driver.stop(handle, force=True)
        raise
    return handle

"""Starting and controlling QEMU for a runv VM; shared by the ``qemu`` (KVM) and ``tcg`` plugins.

QEMU runs as a child of the shim, in the container's state directory (so its socket
paths stay short), with its stderr and the guest console appended to ``console.log``.
It is controlled through QMP with ``qemu.qmp``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from runv.errors import RunvError
from runv.sandbox.control import socket_name
from runv.sandbox.state import is_running, process_start_time
from runv.sandbox.vmspec import Nic, VMHandle, VMSpec

BINARY = "qemu-system-x86_64"
QMP_SOCKET = "qmp.sock"
START_TIMEOUT = 20.0
QUIT_TIMEOUT = 5.0
HOTPLUG_PORT = "hotplug"  # ids of the free PCIe root ports: hotplug0, hotplug1, ...


def binary() -> str | None:
    return shutil.which(BINARY)


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


def command(vm: VMSpec, accel: str, cpu: str | None = None) -> list[str]:
    """The QEMU command line for ``vm``."""
    args = [
        binary() or BINARY,
        "-name", f"runv-{vm.name}",
        "-machine", f"q35,accel={accel}",
        "-m", str(vm.memory_mib),
        "-smp", str(vm.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(vm.kernel),
        "-initrd", str(vm.initrd),
        "-append", " ".join(("console=ttyS0",) + vm.kernel_args),
        "-chardev", f"file,id=console,path={opt(local(vm.console_log, vm.state_dir))},append=on",
        "-serial", "chardev:console",
        "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent,path={opt(local(vm.agent_socket, vm.state_dir))},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=agent,name=org.runv.agent",
    ]
    if cpu:
        args += ["-cpu", cpu]
    for index, share in enumerate(vm.shares):
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
    return args


def start(vm: VMSpec, plugin: str, accel: str, cpu: str | None = None, extra: list[str] = ()) -> VMHandle:
    """Starts QEMU and returns once its QMP socket is up; fails with QEMU's own words.
    ``extra`` goes at the end of the command line (templates: memory backend, -incoming)."""
    argv = command(vm, accel, cpu) + list(extra)
    with open(vm.console_log, "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[nic.fd for nic in vm.nics]
        )
    qmp = vm.state_dir / QMP_SOCKET
    deadline = time.monotonic() + START_TIMEOUT
    while not qmp.exists():
        if proc.poll() is not None:
            raise RunvError(f"{BINARY} failed to start (exit {proc.returncode}): {vm.last_words()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RunvError(f"{BINARY} did not start within {START_TIMEOUT:.0f} s: {vm.last_words()}")
        time.sleep(0.01)
    return VMHandle(
        hypervisor=plugin,
        pid=proc.pid,
        data={"qmp": str(qmp), "start_time": process_start_time(proc.pid), "argv": argv, "hotplug_slots": vm.hotplug_slots},
    )


def alive(handle: VMHandle) -> bool:
    return is_running(handle.pid, handle.data.get("start_time"))


async def _qmp(path: str, *commands: str) -> list:
    from qemu.qmp import QMPClient

    client = QMPClient("runv")
    with socket_name(path) as name:
        await asyncio.wait_for(client.connect(name), 5)
    try:
        return [await client.execute(cmd) for cmd in commands]
    finally:
        await client.disconnect()


def qmp(handle: VMHandle, *commands: str) -> list:
    """Runs QMP commands against the VM; raises RunvError when QEMU does not answer."""
    try:
        return asyncio.run(_qmp(handle.data["qmp"], *commands))
    except Exception as exc:  # noqa: BLE001 - qemu.qmp raises many kinds
        raise RunvError(f"QMP {', '.join(commands)} failed for VM pid {handle.pid}: {exc or type(exc).__name__}") from None


def status(handle: VMHandle) -> dict:
    """QMP ``query-status`` and ``query-kvm`` in one: ``{"status": ..., "running": ..., "kvm": {...}}``."""
    run_state, kvm = qmp(handle, "query-status", "query-kvm")
    return {**run_state, "kvm": kvm}


def stop(handle: VMHandle, force: bool) -> bool:
    """Asks QEMU to quit (or kills it) and waits for it to be gone."""
    if not alive(handle):
        return True
    if not force:
        try:
            qmp(handle, "quit")
        except RunvError:
            pass
        if _wait_gone(handle, QUIT_TIMEOUT):
            return True
    try:
        os.kill(handle.pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    _wait_gone(handle, QUIT_TIMEOUT)
    return True


def _wait_gone(handle: VMHandle, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(handle):
        try:  # reap it when it is our child (the shim); other callers just watch it go
            os.waitpid(handle.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def _attach_nic(path: str, nic: Nic, slots: int) -> None:
    from qemu.qmp import ExecuteError, QMPClient

    client = QMPClient("runv")
    with socket_name(path) as name:
        await asyncio.wait_for(client.connect(name), 5)
    try:
        client.send_fd_scm(nic.fd)
        await client.execute("getfd", {"fdname": nic.id})
        await client.execute("netdev_add", {"type": "tap", "id": nic.id, "fd": nic.id})
        errors = []
        for index in range(slots):  # the first free root port takes it
            # addr 0: a root port has one slot; QEMU would take a second device at another
            # address, which the guest never scans (PCIe ports have only device 0)
            device = {"driver": "virtio-net-pci", "id": f"dev-{nic.id}", "netdev": nic.id, "mac": nic.mac, "addr": "0"}
            try:
                await client.execute("device_add", {**device, "bus": f"{HOTPLUG_PORT}{index}"})
                return
            except ExecuteError as exc:
                errors.append(str(exc))
        await client.execute("netdev_del", {"id": nic.id})
        raise RunvError(f"no free PCIe slot to hot-plug NIC {nic.id} ({slots} kept free; {'; '.join(errors[-1:])})")
    finally:
        await client.disconnect()


def attach_nic(handle: VMHandle, nic: Nic) -> bool:
    """Hot-plugs a virtio-net NIC on the tap ``nic.fd`` (sent over QMP with SCM_RIGHTS)."""
    try:
        asyncio.run(_attach_nic(handle.data["qmp"], nic, handle.data.get("hotplug_slots", 0)))
    except RunvError:
        raise
    except Exception as exc:  # noqa: BLE001 - qemu.qmp raises many kinds
        raise RunvError(f"cannot hot-plug NIC {nic.id} into VM pid {handle.pid}: {exc or type(exc).__name__}") from None
    return True

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
from pathlib import Path

from runv.api import VM, Nic, RunvError, VMSpec, cgroups, connect_unix, jail, process_start_time, socket_name, stop_process

BINARY = "qemu-system-x86_64"
QMP_SOCKET = "qmp.sock"
START_TIMEOUT = 20.0
QUIT_TIMEOUT = 5.0
HOTPLUG_PORT = "hotplug"  # ids of the free PCIe root ports: hotplug0, hotplug1, ...
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
TCG_CODE_CACHE_MIB = 256  # -accel tcg,tb-size: ample for a kernel and the agent, and inside the cgroup
JAIL_DIR = "jail"  # in the state directory: the (empty) mount point of the jail's tmpfs


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


def code_cache_mib(accel: str) -> int:
    """The translated-code cache QEMU may fill (counted in its cgroup): TCG's, bounded, or none."""
    return TCG_CODE_CACHE_MIB if accel == "tcg" else 0


def accel_option(accel: str) -> str:
    """``-accel``'s value: TCG with its code cache bounded (QEMU's default is 1 GiB)."""
    return f"tcg,tb-size={TCG_CODE_CACHE_MIB}" if accel == "tcg" else accel


def command(vm: VMSpec, accel: str, cpu: str | None = None, fds: tuple[int, int] | None = None) -> list[str]:
    """The QEMU command line for ``vm``; ``fds``: the listening QMP and agent sockets it
    inherits (None: placeholders, for a template's shape)."""
    qmp_fd, agent_fd = fds or ("QMP", "AGENT")
    args = [
        binary() or BINARY,
        "-name", f"runv-{vm.name}",
        "-machine", "q35", "-accel", accel_option(accel),
        "-m", str(vm.memory_mib),
        "-smp", str(vm.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-sandbox", SANDBOX,
        "-kernel", str(vm.kernel),
        "-initrd", str(vm.initrd),
        "-append", " ".join(("console=ttyS0",) + vm.kernel_args),
        "-chardev", f"file,id=console,path={opt(local(vm.console_log, vm.state_dir))},append=on",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,fd={qmp_fd},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=agent,fd={agent_fd},server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=agent,name=org.runv.agent",
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
    return args


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


def start(vm: VMSpec, plugin: str, accel: str, cpu: str | None = None, extra: list[str] = (), cls: type[QemuVM] | None = None,
          binds: list[jail.Bind] = ()) -> QemuVM:
    """Starts QEMU jailed and returns once QMP answers (as a ``cls``, default QemuVM);
    fails with QEMU's own words, leaving no cgroup behind. ``extra`` goes at the end of the
    command line (templates: memory backend, -incoming), ``binds`` are what it needs in the
    jail beyond the VM's own files."""
    program = binary() or BINARY
    cgroup = cgroups.for_vm(vm.state_dir)
    cgroup.create(*cgroups.limits(vm.memory_mib, vm.vcpus, code_cache_mib(accel)))
    root = vm.state_dir / JAIL_DIR
    qmp = vm.state_dir / QMP_SOCKET
    try:
        root.mkdir(exist_ok=True)
        sockets = [listen(qmp), listen(vm.agent_socket)]
        try:
            argv = command(vm, accel, cpu, fds=tuple(s.fileno() for s in sockets)) + list(extra)
            jailed = jail.command(argv, root=root, cwd=vm.state_dir, binds=jail.vm_binds(vm, program) + list(binds),
                                  cgroups=cgroup.procs(), kvm=accel == "kvm", fd_dir=bool(vm.shares))
            with open(vm.console_log, "ab") as log:
                proc = subprocess.Popen(jailed, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        pass_fds=[nic.fd for nic in vm.nics] + [s.fileno() for s in sockets])
        finally:
            for sock in sockets:
                sock.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not greeted(qmp, 1.0):
            if proc.poll() is not None:
                raise RunvError(f"{BINARY} failed to start (exit {proc.returncode}): {vm.last_words()}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RunvError(f"{BINARY} did not start within {START_TIMEOUT:.0f} s: {vm.last_words()}")
            time.sleep(0.01)
    except BaseException:
        cgroup.remove()
        _remove_jail_dir(root)
        raise
    return (cls or QemuVM)(plugin, proc.pid, process_start_time(proc.pid),
                  {"qmp": str(qmp), "argv": argv, "hotplug_slots": vm.hotplug_slots, "console_log": str(vm.console_log),
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

    def stop(self, force: bool = False) -> None:
        """Asks QEMU to quit (or kills it), waits for it to be gone, and removes its cgroup
        (killing anything left in it) and the jail's mount point."""
        stop_process(self.pid, self.start_time, ask=lambda: self.qmp("quit"), grace=QUIT_TIMEOUT, force=force)
        if "cgroup" in self.data:
            cgroups.from_record(self.data["cgroup"]).remove()
            _remove_jail_dir(Path(self.data["jail"]))

    def pause(self) -> None:
        self.qmp("stop")

    def resume(self) -> None:
        self.qmp("cont")

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


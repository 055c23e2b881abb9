"""runv hypervisor plugin ``kvmtool``: KVM through kvmtool's ``lkvm``.

kvmtool is not packaged by Debian; build it from source
(https://git.kernel.org/pub/scm/linux/kernel/git/will/kvmtool.git) and put ``lkvm`` on
PATH, or name it with ``RUNV_LKVM=/path/to/lkvm`` or in the config file::

    [kvmtool]
    path = "/opt/kvmtool/lkvm"

kvmtool has a single virtio console, so the guest console is ttyS0 and the agent talks
over the second 8250 UART: ``--tty 1`` makes kvmtool expose ttyS1 as a host pty, the
kernel gets ``runv.agent=/dev/ttyS1`` (the agent puts the tty in raw mode), and a relay
process (:mod:`runv_kvmtool.relay`) serves the pty at ``vm.agent_socket``. Disks have no
serial in kvmtool: the guest finds them by order (``/dev/vda``, ``/dev/vdb``...). NICs
cannot be given as open taps, so a container with network interfaces is refused. kvmtool
needs hardware KVM like the ``qemu`` plugin, so the probe also runs runv's KVM test.

lkvm is jailed as QEMU is (:mod:`runv.api.jail`, docs/security.md): its own cgroup, ``/`` a
tmpfs with only its binary, libraries, the VM's files and ``$HOME`` (``lkvm/`` in the state
directory, where kvmtool keeps its control socket; the control commands get the same
``$HOME``), /dev/kvm and a private devpts for its ptys; the relay opens the agent's pty
through ``/proc/PID/root``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from runv.api import (
    NINEP_VIRTIO,
    VM,
    AgentChannel,
    Capabilities,
    GuestModules,
    HypervisorInfo,
    RunvError,
    VMSpec,
    await_start,
    hookimpl,
    jail,
    kvm_verdict,
    process_start_time,
    run_tool,
    stop_process,
    vmmcgroup,
)
from runv.api.config import section

PRIORITY = 15  # below qemu (20), above tcg (10)
BINARY = "lkvm"
RELAY = "runv_kvmtool.relay"  # the module of the relay process: python -m RELAY PTY SOCKET
PATH_ENV = "RUNV_LKVM"
AGENT_TTY = 1  # ttyS1; ttyS0 is the console
CAPABILITIES = Capabilities(
    shared_fs=NINEP_VIRTIO,  # --9p DIR,TAG
    agent=AgentChannel.tty(f"/dev/ttyS{AGENT_TTY}"),
    disk_prefix="/dev/vd",  # --disk, in order, no serial
    disk_formats=("raw",),
    nics=False,  # kvmtool makes its own taps; it cannot take the net plugin's open ones
    pause=True,  # lkvm pause / resume
)
PTY_LINE = re.compile(r"Assigned terminal (\d+) to pty (\S+)")
START_TIMEOUT = 10.0
HOME = "lkvm"  # in the state directory: kvmtool's $HOME (its control sockets are in $HOME/.lkvm)
JAIL_DIR = "jail"  # in the state directory: the mount point of the jail's tmpfs


def lkvm() -> str | None:
    """The lkvm to run: $RUNV_LKVM, the config file's [kvmtool] path, or PATH."""
    configured = os.environ.get(PATH_ENV) or section("kvmtool").get("path")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which(BINARY)


def vm_name(vm: VMSpec) -> str:
    return f"runv-{vm.name}"


def command(vm: VMSpec, binary: str = BINARY) -> list[str]:
    """The ``lkvm run`` command line for ``vm``."""
    args = [
        binary, "run",
        "--name", vm_name(vm),
        "--cpus", str(vm.vcpus),
        "--mem", str(vm.memory_mib),
        "--kernel", str(vm.kernel),
        "--initrd", str(vm.initrd),
        "--params", " ".join(("console=ttyS0",) + vm.kernel_args),
        "--console", "serial",
        "--tty", str(AGENT_TTY),
        "--network", "mode=none",
        "--rng",  # the host's entropy (the guest contract, docs/plugins.md)
    ]
    for share in vm.shares:
        args += ["--9p", f"{share.path},{share.tag}"]
    for disk in vm.disks:
        args += ["--disk", f"{disk.path}{',ro' if disk.readonly else ''}"]
    return args


def control(action: str, name: str, binary: str | None = None) -> list[str]:
    """``lkvm pause|resume|stop -n NAME``."""
    return [binary or BINARY, action, "--name", name]


def environment(home: str) -> dict[str, str]:
    """lkvm's environment: ``$HOME`` says where its control sockets are."""
    return {**os.environ, "HOME": home}


def jailed(vm: VMSpec, binary: str, cgroup: vmmcgroup.Cgroup) -> list[str]:
    """``lkvm run`` for ``vm`` in its jail (:mod:`runv.api.jail`)."""
    home = os.path.abspath(vm.state_dir / HOME)
    return jail.command(command(vm, binary), root=vm.state_dir / JAIL_DIR, cwd=vm.state_dir,
                        binds=jail.vm_binds(vm, binary, writable=(home,)), cgroups=cgroup.procs(), kvm=True, devpts=True)


class KvmtoolVM(VM):
    """An ``lkvm run`` process and the relay serving its agent pty."""

    def lkvm(self, action: str) -> None:
        run_tool(control(action, self.data["name"], self.data["lkvm"]), f"lkvm {action} {self.data['name']}", timeout=10,
                 env=environment(self.data["home"]))

    def stop(self, force: bool = False) -> None:
        """Stops lkvm (``lkvm stop``, or SIGKILL) and the relay; removes lkvm's cgroup and jail mount point."""
        stop_process(self.pid, self.start_time, ask=lambda: self.lkvm("stop"), force=force)
        stop_process(self.data.get("relay"), self.data.get("relay_start_time"), force=True)
        vmmcgroup.from_record(self.data["cgroup"]).remove()
        _remove_dir(Path(self.data["jail"]))

    def pause(self) -> None:
        self.lkvm("pause")

    def resume(self) -> None:
        self.lkvm("resume")


@hookimpl
def hypervisor_info():
    return HypervisorInfo(capabilities=CAPABILITIES, vm=KvmtoolVM, priority=PRIORITY, programs=(BINARY, RELAY))


@hookimpl
def guest_modules():
    """The drivers of lkvm's virtio-pci devices: disks, the 9p shares, entropy (--rng)."""
    return GuestModules(at_boot=("virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "virtio_rng"))


@hookimpl
def probe():
    if lkvm() is None:
        where = os.environ.get(PATH_ENV) or "PATH"
        return (f"lkvm not found on {where}: kvmtool is not packaged by Debian, build it from "
                f"git.kernel.org/pub/scm/linux/kernel/git/will/kvmtool.git and set {PATH_ENV} or [kvmtool] path")
    return kvm_verdict()["reason"]


@hookimpl
def boot(vm):
    binary = lkvm()
    if binary is None:
        raise RunvError(probe())
    home = vm.state_dir / HOME
    (home / ".lkvm").mkdir(parents=True, exist_ok=True)
    (vm.state_dir / JAIL_DIR).mkdir(exist_ok=True)
    cgroup = vmmcgroup.for_vm(vm.state_dir)
    cgroup.create(*vmmcgroup.limits(vm.memory_mib, vm.vcpus))
    try:
        return _start(vm, binary, cgroup, home)
    except BaseException:
        cgroup.remove()
        _remove_dir(vm.state_dir / JAIL_DIR)
        raise


def _start(vm: VMSpec, binary: str, cgroup: vmmcgroup.Cgroup, home: Path) -> KvmtoolVM:
    with open(vm.console_log, "ab") as log:
        proc = subprocess.Popen(jailed(vm, binary, cgroup), cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, env=environment(str(home.absolute())))

    def agent_pty() -> str | None:
        match = PTY_LINE.search(vm.console_log.read_text(errors="replace"))
        if match and int(match.group(1)) == AGENT_TTY:
            return f"/proc/{proc.pid}/root{match.group(2)}"  # in lkvm's private devpts
        return None

    pty = await_start(proc, agent_pty, vm.console_log, "lkvm", START_TIMEOUT, expected="report its agent pty", every=0.02)
    with open(vm.console_log, "ab") as log:  # the relay's errors go with the VM's
        relay = subprocess.Popen([sys.executable, "-m", RELAY, pty, str(vm.agent_socket)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    return KvmtoolVM("kvmtool", proc.pid, process_start_time(proc.pid), {
        "name": vm_name(vm), "lkvm": binary, "relay": relay.pid, "relay_start_time": process_start_time(relay.pid),
        "pty": pty, "home": str(home.absolute()), "cgroup": cgroup.record(), "jail": str((vm.state_dir / JAIL_DIR).absolute())})


def _remove_dir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # gone already

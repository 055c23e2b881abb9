"""runv hypervisor plugin ``kvmtool``: KVM through kvmtool's ``lkvm``.

kvmtool is not packaged by Debian; build it from source
(https://git.kernel.org/pub/scm/linux/kernel/git/will/kvmtool.git) and put ``lkvm`` on
PATH, or name it with ``RUNV_LKVM=/path/to/lkvm`` or in the config file::

    [kvmtool]
    path = "/opt/kvmtool/lkvm"

kvmtool has a single virtio console, so the guest console is ttyS0 and the agent talks
over the second 8250 UART: ``--tty 1`` makes kvmtool expose ttyS1 as a host pty, the
kernel gets ``runv.agent=/dev/ttyS1`` (the agent puts the tty in raw mode), and a relay
process (:mod:`runv_kvmtool.relay`) serves the pty at ``vm.agent_socket``. kvmtool
needs hardware KVM like the ``qemu`` plugin, so the probe also runs the KVM test
(from ``runv-qemu`` when it is installed).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from runv import hookimpl
from runv.errors import RunvError
from runv.sandbox.state import is_running, process_start_time
from runv.sandbox.vmspec import VMHandle, VMSpec

PRIORITY = 15  # below qemu (20), above tcg (10)
BINARY = "lkvm"
PATH_ENV = "RUNV_LKVM"
AGENT_TTY = 1  # ttyS1; ttyS0 is the console
PTY_LINE = re.compile(r"Assigned terminal (\d+) to pty (\S+)")
START_TIMEOUT = 10.0


def lkvm() -> str | None:
    """The lkvm to run: $RUNV_LKVM, the config file's [kvmtool] path, or PATH."""
    from runv.plugins import config

    configured = os.environ.get(PATH_ENV) or config().get("kvmtool", {}).get("path")
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
        "--params", " ".join(("console=ttyS0", f"runv.agent=/dev/ttyS{AGENT_TTY}") + vm.kernel_args),
        "--console", "serial",
        "--tty", str(AGENT_TTY),
        "--network", "mode=none",
    ]
    for share in vm.shares:
        args += ["--9p", f"{share.path},{share.tag}"]
    for disk in vm.disks:
        if disk.format != "raw":
            raise RunvError(f"kvmtool boots raw disk images only, not {disk.format} ({disk.path})")
        args += ["--disk", f"{disk.path}{',ro' if disk.readonly else ''}"]
    return args


def control(action: str, name: str, binary: str | None = None) -> list[str]:
    """``lkvm pause|resume|stop -n NAME``."""
    return [binary or BINARY, action, "--name", name]


@hookimpl
def probe():
    if lkvm() is None:
        where = os.environ.get(PATH_ENV) or "PATH"
        return (f"lkvm not found on {where}: kvmtool is not packaged by Debian, build it from "
                f"git.kernel.org/pub/scm/linux/kernel/git/will/kvmtool.git and set {PATH_ENV} or [kvmtool] path")
    try:
        from runv_qemu import kvm
    except ImportError:
        return None if os.path.exists("/dev/kvm") else "no /dev/kvm: enable VT-x/AMD-V and load kvm_intel or kvm_amd"
    return kvm.cached_verdict()["reason"]


@hookimpl
def boot(vm):
    binary = lkvm()
    if binary is None:
        raise RunvError(probe())
    with open(vm.console_log, "ab") as log:
        proc = subprocess.Popen(command(vm, binary), cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    pty = None
    while pty is None:
        match = PTY_LINE.search(vm.console_log.read_text(errors="replace"))
        if match and int(match.group(1)) == AGENT_TTY:
            pty = match.group(2)
        elif proc.poll() is not None:
            raise RunvError(f"lkvm failed to start (exit {proc.returncode}): {vm.last_words()}")
        elif time.monotonic() > deadline:
            proc.kill()
            raise RunvError(f"lkvm did not report its agent pty within {START_TIMEOUT:.0f} s: {vm.last_words()}")
        else:
            time.sleep(0.02)
    relay = subprocess.Popen([sys.executable, "-m", "runv_kvmtool.relay", pty, str(vm.agent_socket)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(vm.console_log, "ab"),
                             start_new_session=True)
    return VMHandle(hypervisor="kvmtool", pid=proc.pid, data={
        "name": vm_name(vm), "lkvm": binary, "start_time": process_start_time(proc.pid),
        "relay": relay.pid, "relay_start_time": process_start_time(relay.pid), "pty": pty})


def _lkvm(handle: VMHandle, action: str) -> None:
    out = subprocess.run(control(action, handle.data["name"], handle.data["lkvm"]), capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise RunvError(f"lkvm {action} {handle.data['name']} failed: {(out.stderr or out.stdout).strip() or out.returncode}")


@hookimpl
def pause_vm(handle):
    _lkvm(handle, "pause")
    return True


@hookimpl
def resume_vm(handle):
    _lkvm(handle, "resume")
    return True


@hookimpl
def stop_vm(handle, force):
    for pid, start in ((handle.pid, handle.data.get("start_time")), (handle.data.get("relay"), handle.data.get("relay_start_time"))):
        if pid is None or not is_running(pid, start):
            continue
        if not force and pid == handle.pid:
            try:
                _lkvm(handle, "stop")
            except (RunvError, subprocess.TimeoutExpired):
                pass
        deadline = time.monotonic() + 5
        while is_running(pid, start) and time.monotonic() < deadline:
            if force or time.monotonic() > deadline - 3:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.02)
    return True

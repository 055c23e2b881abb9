"""runv hypervisor plugin ``xen``: each container is a Xen PVH domain, driven with ``xl``.

The plugin writes an ``xl`` domain config (:func:`config`) into the state directory:
PVH direct kernel boot (kernel, ramdisk, cmdline), memory, vcpus, a ``p9`` entry per
share (the rootfs), a ``disk`` entry per disk, ``vif`` entries for networking and a PV
``channel`` for the agent, served by the backend at ``vm.agent_socket``. In the guest the
channel is ``/dev/hvc1`` (``hvc0`` is the console), named by ``runv.agent=/dev/hvc1``.

``xl create -F`` keeps xl in the foreground while the domain lives, so its PID is the
VM's PID for the core; pause, resume and stop use ``xl pause|unpause|shutdown|destroy``.
``xl`` needs a running Xen hypervisor (dom0) even for ``xl -N create``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from runv import hookimpl
from runv.errors import RunvError
from runv.sandbox.state import process_start_time
from runv.sandbox.vmspec import VMHandle, VMSpec

PRIORITY = 18  # a Xen dom0 has no KVM; where it works it beats tcg
XL = "xl"
CAPABILITIES = "/proc/xen/capabilities"
CONFIG_FILE = "domain.cfg"
START_TIMEOUT = 20.0


def domain_name(vm: VMSpec) -> str:
    return f"runv-{vm.name}"


def _quote(value) -> str:
    text = str(value)
    if '"' in text or "\n" in text:
        raise RunvError(f"xl config values cannot contain quotes or newlines: {text!r}")
    return f'"{text}"'


def _list(items: list[str]) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"    {_quote(item)},\n" for item in items) + "]"


def config(vm: VMSpec, vifs: tuple[dict, ...] = ()) -> str:
    """The ``xl`` domain config for ``vm``; ``vifs`` are dicts of xl vif keys (mac, bridge, script...)."""
    for share in vm.shares:
        if "," in str(share.path) or "," in share.tag:
            raise RunvError(f"xl p9 entries cannot hold commas: {share.path}")
    cmdline = " ".join(("console=hvc0", "runv.agent=/dev/hvc1") + vm.kernel_args)
    p9 = [f"tag={s.tag},security_model=none,path={s.path}" for s in vm.shares]
    disks = [f"format={d.format},vdev=xvd{chr(ord('a') + i)},access={'ro' if d.readonly else 'rw'},target={d.path}"
             for i, d in enumerate(vm.disks)]
    vif = [",".join(f"{k}={v}" for k, v in nic.items()) for nic in vifs]
    channel = [f"name=org.runv.agent,connection=socket,path={vm.agent_socket}"]
    lines = [
        "# written by runv's xen plugin; one container's domain",
        f"name = {_quote(domain_name(vm))}",
        'type = "pvh"',
        f"kernel = {_quote(vm.kernel)}",
        f"ramdisk = {_quote(vm.initrd)}",
        f"cmdline = {_quote(cmdline)}",
        f"memory = {vm.memory_mib}",
        f"vcpus = {vm.vcpus}",
        'on_poweroff = "destroy"',
        'on_reboot = "destroy"',
        'on_crash = "destroy"',
        f"p9 = {_list(p9)}",
        f"disk = {_list(disks)}",
        f"vif = {_list(vif)}",
        f"channel = {_list(channel)}",
    ]
    return "\n".join(lines) + "\n"


def xl(*args: str) -> list[str]:
    return [shutil.which(XL) or XL, *args]


def create_command(path, *, dry_run: bool = False) -> list[str]:
    """``xl create -F CFG`` (foreground: xl lives as long as the domain), or ``xl -N create CFG``."""
    return xl("-N", "create", str(path)) if dry_run else xl("create", "-F", str(path))


@hookimpl
def probe():
    if shutil.which(XL) is None:
        return "xl not found: install xen-utils (apt-get install xen-utils-4.17) and boot the Xen hypervisor"
    try:
        with open(CAPABILITIES) as f:
            caps = f.read()
    except OSError:
        return f"not running on the Xen hypervisor (no {CAPABILITIES}): boot this host with Xen (GRUB's Xen entry)"
    if "control_d" not in caps:
        return "this is a Xen guest, not dom0: run runv in the control domain"
    return None


@hookimpl
def boot(vm):
    path = vm.state_dir / CONFIG_FILE
    path.write_text(config(vm))
    with open(vm.console_log, "ab") as log:
        proc = subprocess.Popen(create_command(path), cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
    name = domain_name(vm)
    deadline = time.monotonic() + START_TIMEOUT
    while subprocess.run(xl("list", name), capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = " | ".join(vm.console_log.read_text(errors="replace").strip().splitlines()[-5:])
            raise RunvError(f"xl create {name} failed: {tail or 'no output'}")
        time.sleep(0.1)
    return VMHandle(hypervisor="xen", pid=proc.pid,
                    data={"domain": name, "config": str(path), "start_time": process_start_time(proc.pid)})


def _xl(handle: VMHandle, action: str) -> None:
    out = subprocess.run(xl(action, handle.data["domain"]), capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RunvError(f"xl {action} {handle.data['domain']} failed: {(out.stderr or out.stdout).strip()}")


@hookimpl
def pause_vm(handle):
    _xl(handle, "pause")
    return True


@hookimpl
def resume_vm(handle):
    _xl(handle, "unpause")
    return True


@hookimpl
def stop_vm(handle, force):
    exists = subprocess.run(xl("list", handle.data["domain"]), capture_output=True).returncode == 0
    if exists:
        try:
            _xl(handle, "destroy" if force else "shutdown")
        except RunvError:
            _xl(handle, "destroy")
    deadline = time.monotonic() + 10
    while process_start_time(handle.pid) == handle.data.get("start_time") and handle.data.get("start_time"):
        if time.monotonic() > deadline:
            try:
                os.kill(handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
        try:
            os.waitpid(handle.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return True

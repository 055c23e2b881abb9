"""runv hypervisor plugin ``xen``: each container is a Xen PVH domain, driven with ``xl``.

The plugin writes an ``xl`` domain config (:func:`config`) into the state directory:
PVH direct kernel boot (kernel, ramdisk, cmdline), memory, vcpus, a ``p9`` entry per
share (the guest mounts it with ``trans=xen``), a ``disk`` entry per disk (the guest sees
``/dev/xvda``, ``/dev/xvdb``... in order) and a PV ``channel`` for the agent, served by the
backend at ``vm.agent_socket``. In the guest the channel is ``/dev/hvc1`` (``hvc0`` is the
console), named by ``runv.agent=/dev/hvc1``. A Xen vif needs a bridge in dom0, not the net
plugin's open taps, so a container with network interfaces is refused.

``xl create -F`` keeps xl in the foreground while the domain lives, so its PID is the
VM's PID for the core; pause, resume and stop use ``xl pause|unpause|shutdown|destroy``.
``xl`` needs a running Xen hypervisor (dom0) even for ``xl -N create``.
"""

from __future__ import annotations

import shutil
import subprocess

from runv.api import (
    VM,
    AgentChannel,
    Capabilities,
    HypervisorInfo,
    RunvError,
    SharedFs,
    VMSpec,
    await_start,
    hookimpl,
    process_start_time,
    run_tool,
    stop_process,
)

PRIORITY = 18  # a Xen dom0 has no KVM; where it works it beats tcg
CAPABILITIES = Capabilities(
    shared_fs=SharedFs("9p", "trans=xen,version=9p2000.L"),  # xl's p9 entries (the 9pfs backend)
    agent=AgentChannel.tty("/dev/hvc1"),  # a PV console channel
    disk_prefix="/dev/xvd",
    disk_formats=("raw", "qcow2"),
    nics=False,
    pause=True,  # xl pause / unpause
)
XL = "xl"
CAPABILITIES_FILE = "/proc/xen/capabilities"
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


def config(vm: VMSpec) -> str:
    """The ``xl`` domain config for ``vm``."""
    for share in vm.shares:
        if "," in str(share.path) or "," in share.tag:
            raise RunvError(f"xl p9 entries cannot hold commas: {share.path}")
    cmdline = " ".join(("console=hvc0",) + vm.kernel_args)
    p9 = [f"tag={s.tag},security_model=none,path={s.path}" for s in vm.shares]
    disks = [f"format={d.format},vdev=xvd{chr(ord('a') + i)},access={'ro' if d.readonly else 'rw'},target={d.path}"
             for i, d in enumerate(vm.disks)]
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
        f"channel = {_list(channel)}",
    ]
    return "\n".join(lines) + "\n"


def xl(*args: str) -> list[str]:
    return [shutil.which(XL) or XL, *args]


def create_command(path, *, dry_run: bool = False) -> list[str]:
    """``xl create -F CFG`` (foreground: xl lives as long as the domain), or ``xl -N create CFG``."""
    return xl("-N", "create", str(path)) if dry_run else xl("create", "-F", str(path))


class XenVM(VM):
    """A domain, with ``xl create -F`` (its PID is the VM's) living as long as it does."""

    def xl(self, action: str) -> None:
        run_tool(xl(action, self.data["domain"]), f"xl {action} {self.data['domain']}", timeout=30)

    def exists(self) -> bool:
        return subprocess.run(xl("list", self.data["domain"]), capture_output=True).returncode == 0

    def stop(self, force: bool = False) -> None:
        if self.exists():
            try:
                self.xl("destroy" if force else "shutdown")
            except RunvError:
                self.xl("destroy")
        stop_process(self.pid, self.start_time, ask=lambda: None, grace=10.0)

    def pause(self) -> None:
        self.xl("pause")

    def resume(self) -> None:
        self.xl("unpause")


@hookimpl
def hypervisor_info():
    return HypervisorInfo(capabilities=CAPABILITIES, vm=XenVM, priority=PRIORITY, programs=(XL,))  # xl create -F lives with the domain


@hookimpl
def probe():
    if shutil.which(XL) is None:
        return "xl not found: install xen-utils (apt-get install xen-utils-4.17) and boot the Xen hypervisor"
    try:
        with open(CAPABILITIES_FILE) as f:
            caps = f.read()
    except OSError:
        return f"not running on the Xen hypervisor (no {CAPABILITIES_FILE}): boot this host with Xen (GRUB's Xen entry)"
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
    await_start(proc, lambda: subprocess.run(xl("list", name), capture_output=True).returncode == 0, vm.console_log,
                f"xl create {name}", START_TIMEOUT, expected="list the domain", every=0.1)
    return XenVM("xen", proc.pid, process_start_time(proc.pid), {"domain": name, "config": str(path)})

"""runv hypervisor plugin ``fake``: the real guest agent as a host process, no VM at all.

Read it as the smallest whole hypervisor plugin: the three hooks (``hypervisor_info``,
``probe``, ``boot``) and a :class:`~runv.api.VM` subclass, importing nothing of runv but
:mod:`runv.api`. It exists so that the shim, the CLI and the agent can be tested in
seconds on any Linux host where you are root, with no QEMU and no guest image.

How it "boots" a VM: it starts ``python -m runv.agent --socket <vm.agent_socket> --rootfs
<state dir>/fake-root`` (the very agent the guest image carries, in its host mode) inside
new mount, UTS and IPC namespaces (``unshare(1)`` from util-linux). The core connects to
the socket as it connects to a VMM's agent channel, and asks the agent to mount the
rootfs share: since this "VMM" shares the host's kernel, its shared filesystem is a bind
mount of the share's host path (``SharedFs("bind", source="path")``). Every mount the
agent makes lives in its own mount namespace (a slave of the host's, as the VMM's jail:
what the host mounts in a share later, a pod member's rootfs, reaches it) and vanishes
with its last process; the
hostname it sets stays in its UTS namespace. The container's processes are ordinary host
processes chrooted into the rootfs: this isolates nothing, it is for tests only.

What it cannot do, it declares (the core then refuses those containers in one line):
no disks (nothing in the "guest" could read a virtio-blk device), no NICs, no templates.
Pause and resume work: SIGSTOP and SIGCONT to every process of the fake VM.

Use it in-process with :func:`runv.testing.registered` (``registered("hypervisor",
"fake", runv.testing.fakevmm)``) or, for ``runv`` subprocesses, put
:func:`runv.testing.fake_vmm_path` on ``PYTHONPATH`` and pass ``--hypervisor fake``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from runv.api import (
    VM,
    AgentChannel,
    Capabilities,
    HypervisorInfo,
    RunvError,
    SharedFs,
    VMSpec,
    hookimpl,
    kill_until_gone,
    last_words,
    process_start_time,
    stop_process,
)

NAME = "fake"
AGENT = "runv.agent"  # the module its VMs run: python -m runv.agent --socket ...
ROOTFS = "fake-root"  # under the VM's state directory: where the agent mounts the container's rootfs
CAPABILITIES = Capabilities(
    shared_fs=SharedFs("bind", options="rbind", source="path"),  # the agent bind-mounts the share's host path, submounts too
    agent=AgentChannel.unix(),  # the agent itself listens on vm.agent_socket
    disk_formats=(),  # no block devices: a storage mode that needs disks is refused before boot
    nics=False,
    pause=True,
)
SOCKET_MAX = 100  # bytes of a unix socket path the agent can bind as it is (sun_path is 108)
PRIVATE = "fake-run"  # under the state directory: the guest's staging area (/run/runv in a VM)
NAMESPACE_WAIT = 5.0  # seconds for unshare(1) to enter the new namespaces
STOP_GRACE = 5.0  # seconds the agent gets to kill its processes after SIGTERM


class FakeVM(VM):
    """The agent process (``pid``) and, in ``data``, its mount namespace (``mntns``,
    ``/proc/PID/ns/mnt`` as read from the host), its ``rootfs`` and ``state_dir``: enough
    to find every process of this fake VM from any later ``runv`` command."""

    def members(self) -> list[int]:
        """The processes of this fake VM: in its mount namespace and either the agent
        (its cwd is the state directory) or chrooted into its rootfs. The second test
        keeps a recycled namespace number from ever naming another container's processes."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") != self.data.get("mntns"):
                    continue
                if (os.readlink(f"/proc/{entry}/root") == self.data.get("rootfs")
                        or os.readlink(f"/proc/{entry}/cwd") == self.data.get("state_dir")):
                    found.append(int(entry))
            except OSError:
                continue
        return found

    def signal_all(self, signum: int) -> None:
        for pid in self.members():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, force: bool = False) -> None:
        """SIGTERM asks the agent to kill its processes and exit; whatever is left of the
        fake VM after that (or at once, with ``force``) is killed. Converges when gone."""
        self.signal_all(signal.SIGCONT)  # a paused agent cannot act on SIGTERM
        stop_process(self.pid, self.start_time, ask=lambda: os.kill(self.pid, signal.SIGTERM),
                     grace=STOP_GRACE, force=force)
        kill_until_gone(self.members, f"fake VM {self.data.get('name')}", STOP_GRACE)

    def pause(self) -> None:
        self.signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_all(signal.SIGCONT)


@hookimpl
def hypervisor_info() -> HypervisorInfo:
    return HypervisorInfo(capabilities=CAPABILITIES, vm=FakeVM, priority=-1000,  # never chosen by `auto` over a real one
                          programs=(AGENT,))


@hookimpl
def probe() -> str | None:
    if os.geteuid() != 0:
        return "the fake VMM needs root (it runs the agent in its own mount namespace)"
    if shutil.which("unshare") is None:
        return "the fake VMM needs unshare(1) (Debian: apt install util-linux)"
    return None


@hookimpl
def boot(vm: VMSpec) -> FakeVM:
    """Starts the agent in new namespaces and returns once it is in them (the core then
    waits for its ``ready`` on the socket, as for any VM)."""
    rootfs = vm.state_dir / ROOTFS
    rootfs.mkdir(parents=True, exist_ok=True)
    socket = str(vm.agent_socket)
    if len(os.fsencode(socket)) >= SOCKET_MAX:  # deep --root: the agent binds it relative to its cwd
        socket = os.path.relpath(socket, vm.state_dir)
    argv = [shutil.which("unshare") or "unshare", "--mount", "--uts", "--ipc", "--propagation", "slave", "--",
            sys.executable, "-S", "-B", "-m", AGENT, "--socket", socket, "--rootfs", str(rootfs),
            "--private", str(vm.state_dir / PRIVATE)]
    if vm.debug:
        argv.append("--debug")
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": _package_parent()}
    host_ns = os.readlink("/proc/self/ns/mnt")
    with open(vm.console_log, "ab") as console:  # the agent's stderr is this VM's console
        try:
            agent = subprocess.Popen(argv, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                     env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise RunvError(f"fake VMM: cannot start {argv[0]}: {exc.strerror}") from None
    deadline = time.monotonic() + NAMESPACE_WAIT
    while True:
        try:
            namespace = os.readlink(f"/proc/{agent.pid}/ns/mnt")
        except OSError:
            namespace = None
        if agent.poll() is not None:
            raise RunvError(f"fake VMM: the agent of {vm.name} exited ({agent.returncode}): {last_words(vm.console_log)}")
        if namespace and namespace != host_ns:
            break
        if time.monotonic() > deadline:
            agent.kill()
            agent.wait()
            raise RunvError(f"fake VMM: unshare did not enter new namespaces within {NAMESPACE_WAIT:.0f} s")
        time.sleep(0.002)
    data = {"name": vm.name, "mntns": namespace, "rootfs": str(rootfs), "state_dir": str(vm.state_dir)}
    return FakeVM(NAME, agent.pid, process_start_time(agent.pid), data)


def _package_parent() -> str:
    """The directory holding the ``runv`` package: the agent is stdlib-only and runs
    without site-packages (``-S``), as it does in the guest."""
    return str(Path(__file__).resolve().parents[2])  # core/runv/testing/fakevmm.py -> core

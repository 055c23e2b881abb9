"""Where Cloud Hypervisor and virtiofsd are, and the command lines that start them.

Everything here is a pure function of a :class:`~runv.api.VMSpec` (plus a binary path),
so the tests compare it with golden files on any host.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from runv.api import RunvError, VMSpec

BINARY = "cloud-hypervisor"
PATH_ENV = "RUNV_CLOUDHV"  # the cloud-hypervisor binary, when it is not on PATH
VIRTIOFSD = "virtiofsd"  # the program serving each share over virtio-fs
VIRTIOFSD_ENV = "RUNV_VIRTIOFSD"  # the virtiofsd binary
CONFIG_SECTION = "cloudhv"  # [cloudhv] path = "...", virtiofsd = "..." in runv's config file
# Where distributions put virtiofsd: the Rust one (its own package; on PATH or in libexec)
# and Debian 12's C one, shipped with QEMU (qemu-system-common).
VIRTIOFSD_CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
RELEASES = "github.com/cloud-hypervisor/cloud-hypervisor/releases"
MIN_VERSION = "v35"  # --disk serial= (the guest finds disks by serial) appeared in v35.0

API_SOCKET = "ch-api.sock"  # in the state directory (the VMM runs there: short socket paths)
GUEST_CID = 3  # the guest's vsock context id (2 is the host); the VM has no other vsock peer
AGENT_PORT = 1024  # the vsock port the guest agent listens on (runv.agent=vsock:1024)
TAG_MAX = 36  # bytes of a virtio-fs tag (the device's config field)
SPECIAL = ',"[]'  # what Cloud Hypervisor's option parser gives a meaning inside a value


def _configured(key: str, env: str) -> str | None:
    from runv.api.config import section

    return os.environ.get(env) or section(CONFIG_SECTION).get(key)


def cloud_hypervisor() -> str | None:
    """The cloud-hypervisor to run: $RUNV_CLOUDHV, ``[cloudhv] path`` in the config file, or PATH."""
    configured = _configured("path", PATH_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which(BINARY)


def virtiofsd() -> str | None:
    """The virtiofsd to run: $RUNV_VIRTIOFSD, ``[cloudhv] virtiofsd``, PATH, then the usual places."""
    configured = _configured("virtiofsd", VIRTIOFSD_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which(VIRTIOFSD)
    if found:
        return found
    return next((path for path in VIRTIOFSD_CANDIDATES if os.access(path, os.X_OK)), None)


def missing() -> str | None:
    """Why the VMM or its file server cannot be found, naming both when both are missing; else None."""
    reasons = []
    if cloud_hypervisor() is None:
        where = f"{PATH_ENV}={os.environ[PATH_ENV]}" if os.environ.get(PATH_ENV) else "PATH"
        reasons.append(f"{BINARY} not found on {where}: Debian has no package for it; install a static release "
                       f"binary ({MIN_VERSION} or later) from {RELEASES} and put it on PATH, or set {PATH_ENV} "
                       f"or [{CONFIG_SECTION}] path")
    if virtiofsd() is None:
        reasons.append(f"virtiofsd not found (PATH, {', '.join(VIRTIOFSD_CANDIDATES)}): install the virtiofsd "
                       f"package (Debian 12: qemu-system-common ships /usr/lib/qemu/virtiofsd), or set "
                       f"{VIRTIOFSD_ENV} or [{CONFIG_SECTION}] virtiofsd")
    return "; ".join(reasons) or None


def local(path: Path, state_dir: Path) -> str:
    """``path`` relative to the state directory when it lives there: the VMM and virtiofsd
    run in it, so socket paths stay short of sun_path's 108 bytes however deep the root is."""
    try:
        return str(path.relative_to(state_dir))
    except ValueError:
        return str(path)


def fs_socket(index: int) -> str:
    """The vhost-user socket of the ``index``-th share's virtiofsd (relative to the state directory)."""
    return f"virtiofs-{index}.sock"


def _value(text: str | Path, what: str, tool: str = BINARY, special: str = SPECIAL) -> str:
    text = str(text)
    if any(c in text for c in special):
        raise RunvError(f"{tool} cannot take {what} {text!r}: its options cannot hold any of {special}")
    return text


def command(vm: VMSpec, binary: str = BINARY) -> list[str]:
    """The ``cloud-hypervisor`` command line for ``vm``: direct kernel boot, the console on
    the 8250 serial port (ttyS0, written to the VMM's stdout), the agent on vsock, one
    ``--fs`` per share (each served by its own virtiofsd), ``--disk`` with the disk's serial,
    ``--net`` on the inherited tap fds, and the REST API socket for pause, resume and shutdown.

    ``--serial tty``, not ``--serial file=``: cloud-hypervisor truncates a serial file when
    it opens it, which would cut off its own error messages in ``console.log``; on stdout the
    console goes to the same file, appended, as its stderr does."""
    args = [
        binary,
        "--api-socket", f"path={API_SOCKET}",
        "--kernel", _value(vm.kernel, "the kernel"),
        "--initramfs", _value(vm.initrd, "the initrd"),
        "--cmdline", " ".join(("console=ttyS0",) + vm.kernel_args),
        "--cpus", f"boot={vm.vcpus}",
        # vhost-user devices (virtio-fs) need guest memory the daemon can map: shared=on
        "--memory", f"size={vm.memory_mib}M" + (",shared=on" if vm.shares else ""),
        "--serial", "tty",
        "--console", "off",
        "--vsock", f"cid={GUEST_CID},socket={_value(local(vm.agent_socket, vm.state_dir), 'the agent socket')}",
    ]
    for index, share in enumerate(vm.shares):
        if len(share.tag.encode()) > TAG_MAX:
            raise RunvError(f"virtio-fs tags are at most {TAG_MAX} bytes, not {share.tag!r}")
        args += ["--fs", f"tag={_value(share.tag, 'the share tag')},socket={fs_socket(index)}"]
    for disk in vm.disks:
        readonly = ",readonly=on" if disk.readonly else ""
        args += ["--disk", f"path={_value(disk.path, 'the disk')}{readonly},serial={_value(disk.serial, 'the serial')}"]
    for nic in vm.nics:  # the fds are inherited (boot passes them): the VMM never enters the container's netns
        mtu = f",mtu={nic.mtu}" if nic.mtu != 1500 else ""  # the device's MTU feature (v27 and later)
        args += ["--net", f"fd={nic.fd},mac={nic.mac}{mtu}"]
    return args


def virtiofsd_command(vm: VMSpec, index: int, binary: str = VIRTIOFSD) -> list[str]:
    """One share's virtiofsd: ``--socket-path`` and ``-o source=``, the spelling both the
    C virtiofsd (QEMU's, Debian 12) and the Rust one accept. The C one cannot export a
    directory read-only, so a read-only share is read-only through the guest's ``ro`` mount."""
    share = vm.shares[index]
    source = _value(share.path, f"the directory of share {share.tag!r}", "virtiofsd", ",")  # -o splits at commas
    return [binary, f"--socket-path={fs_socket(index)}", "-o", f"source={source}"]

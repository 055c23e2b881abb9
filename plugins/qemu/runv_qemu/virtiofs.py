"""virtio-fs for a VM's shares: a ``virtiofsd`` per share (Debian's C server, shipped with
QEMU as /usr/lib/qemu/virtiofsd), which QEMU's ``vhost-user-fs-pci`` device talks to.

Each server is jailed as QEMU is (:mod:`runv.api.jail`: the parent-death signal, the VMM's
own cgroup, a private ``/`` holding only its binary, libraries and the share, no_new_privs,
the seccomp filter refusing setuid/setgid bits) and keeps, of its own capability list,
only what serving files as their owners needs: no ``mknod`` (device nodes), ``setfcap``
(file capabilities) or ``fsetid``; it chroots into the share (``-o sandbox=chroot``: the
jail is its namespace). So the guest gets from it what it gets from QEMU's 9p server with
``security_model=passthrough`` (docs/storage.md), at a fraction of the cost per file.

The host makes the server's listening socket and connects to it before either process
runs; the server gets the listening end (``--fd``), QEMU the connected one (a chardev
``fd``): neither needs a writable directory, nor a path in its jail. A server that dies
takes the VM's file system with it (QEMU 7.2's vhost-user-fs cannot reconnect, and the
guest's requests would wait forever), so a thread of the shim stops the VM at once and
says why (:func:`supervise`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

from runv.api import RunvError, Share, VMSpec, jail, process_start_time, socket_name, stop_process, vmmcgroup

BINARY = "/usr/lib/qemu/virtiofsd"
OPTIONS = (
    "-o", "log_level=err",  # its errors go to the console log (the VM's last words), not its chatter
    "-o", "sandbox=chroot",  # the jail is its mount namespace: a chroot into the share inside it
    "-o", "cache=auto",  # close-to-open coherence with the host, attributes kept for a second (measured: docs/storage.md)
    "-o", "xattr",  # user.* attributes, as 9p passes them; security.capability needs setfcap, which it lacks
    "-o", "announce_submounts",  # the share holds mounts (the pod directory): each is a device of its own in the guest
    "-o", "modcaps=-mknod:-setfcap:-fsetid",  # what its capability list loses, as the jail's bounding set does
    "--rlimit-nofile=0",  # raising it would need sys_resource
)
# beyond the jail's: each request runs as its owner; the chroot; and its own narrowing, after which
# it has only chown, dac_override, fowner, setuid and setgid (its list, less modcaps)
CAPS = ("setuid", "setgid", "sys_chroot", "setpcap")
FILE_MAX = "/proc/sys/fs/file-max"  # read at its start, whatever --rlimit-nofile says  # beyond the jail's: each request runs as its owner; the chroot
SOCKET = "virtiofs{}.sock"  # in the state directory, only until both ends are open
logger = logging.getLogger("runv.qemu")


def binary() -> str | None:
    """The virtiofsd to run, or None (the VM's shares are then served over 9p)."""
    return BINARY if os.access(BINARY, os.X_OK) else None


def missing() -> str:
    return f"{BINARY} is not installed (Debian's qemu-system-common has it): shares go over 9p, slower"


class Server:
    """One running virtiofsd and the socket QEMU uses to reach it."""

    def __init__(self, proc: subprocess.Popen, connection: socket.socket, share: Share) -> None:
        self.proc, self.connection, self.share = proc, connection, share

    def record(self) -> list:
        """What finds it again: its pid and start time."""
        return [self.proc.pid, process_start_time(self.proc.pid)]


def start(vm: VMSpec, index: int, share: Share, cgroup: vmmcgroup.Cgroup, jail_root: Path) -> Server:
    """Starts the server of ``vm``'s share ``index``, jailed. It need not be up yet: QEMU's
    device waits for its answers, and QEMU fails with both their last words if it dies."""
    program = binary()
    if program is None:
        raise RunvError(missing())
    path = vm.state_dir / SOCKET.format(index)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with socket_name(path) as name:
            listener.bind(name)
            listener.listen(1)
            connection.connect(name)  # waits in the backlog for the server's accept
        argv = [program, f"--fd={listener.fileno()}", "-o", f"source={share.path}", *OPTIONS]
        binds = [*jail.system_binds(program), jail.Bind(str(share.path), "tree" if share.holds_mounts else "dir", not share.readonly),
                 jail.Bind(FILE_MAX, "file")]
        jailed = jail.command(argv, root=jail_root, cwd=vm.state_dir, binds=binds, cgroups=cgroup.procs(), fd_dir=True, caps=CAPS)
        with open(vm.console_log, "ab") as log:  # its complaints go with the VM's
            proc = subprocess.Popen(jailed, cwd=vm.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    pass_fds=[listener.fileno()])
    except OSError as exc:
        connection.close()
        raise RunvError(f"cannot start virtiofsd for share {share.tag} of container {vm.name}: {exc.strerror}") from None
    finally:
        listener.close()
        path.unlink(missing_ok=True)
    return Server(proc, connection, share)


def supervise(server: Server, vmm_pid: int, vmm_start: int | None, name: str, console_log: Path) -> None:
    """Stops the VM (its VMM ``vmm_pid``) when its file server fails while the VM runs, saying
    so in the console log and runv's log: the guest's file system is gone, and so is the
    container. (A server whose QEMU went away exits 0 by itself.)"""

    def watch() -> None:
        code = server.proc.wait()
        if code == 0 or process_start_time(vmm_pid) != vmm_start:
            return  # the VM went first, and its server after it: nothing to say
        how = f"signal {-code}" if code < 0 else f"status {code}"
        reason = f"virtiofsd of share {server.share.tag} exited ({how}): stopping the VM of container {name}"
        logger.error("%s", reason)
        try:
            with open(console_log, "a") as log:
                log.write(f"runv: {reason}\n")
        except OSError:
            pass
        stop_process(vmm_pid, vmm_start, force=True)

    threading.Thread(target=watch, name=f"virtiofsd-{server.share.tag}", daemon=True).start()


def stop(records: list, force: bool) -> None:
    """Stops the servers a VM record names (each exits by itself once QEMU is gone)."""
    for pid, start_time in records:
        stop_process(pid, start_time, ask=functools.partial(os.kill, pid, signal.SIGTERM), grace=2.0, force=force)

"""The shim as the init of a PID namespace of its own, with that namespace's ``/proc`` in
its mount namespace (:mod:`runv.vm.mountns`): what looks at the container's PID from the
host through ``/proc`` there (``podman top``: psgo joins the mount namespace of the
container's PID) sees the shim, its VMM and the VMM's helpers, never the host's processes;
and the kernel kills them all when the shim dies.

Inside, PIDs are the namespace's. What the shim records for the host to read (its own PID,
its VMM's) is translated through the host's ``/proc``, kept open from before (:func:`host_pid`).
"""

from __future__ import annotations

import ctypes
import os

from runv.api.errors import RunvError
from runv.vm import mountns

CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
_libc = ctypes.CDLL(None, use_errno=True)
_host_proc: int | None = None  # the host's /proc (a descriptor), inside a namespace of our own
_host_self = 0  # this process's PID on the host, inside one


def _fail(what: str) -> RunvError:
    return RunvError(f"cannot {what}: {os.strerror(ctypes.get_errno())}")


def fork() -> int:
    """``os.fork()`` whose child is the init of a new PID namespace; the caller and its later
    children stay in the caller's."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWPID) != 0:
            raise _fail("give the shim a PID namespace of its own")
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0 and _libc.setns(own, CLONE_NEWPID) != 0:
                raise _fail("return to runv's PID namespace")
        return pid
    finally:
        os.close(own)


def enter() -> None:
    """In the namespace's init, with one thread (right after :func:`fork`): its host PID and
    the host's ``/proc`` kept, a mount namespace of its own, the namespace's ``/proc`` there."""
    global _host_proc, _host_self
    host_self = int(os.readlink("/proc/self"))  # still the host's /proc: the host's PID
    host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mountns.leave()
        if _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
            raise _fail("mount the shim's /proc")
    except BaseException:
        os.close(host_proc)
        raise
    _host_proc, _host_self = host_proc, host_self


def own_pid() -> int:
    """This process's PID as the host sees it."""
    return _host_self if _host_proc is not None else os.getpid()


def host_pid(pid: int) -> int:
    """The host's PID of this namespace's ``pid`` (found by the namespace's PID in the host's
    ``/proc/<pid>/status``, ``NSpid``); ``pid`` itself outside a namespace of our own, 0 when
    it is gone."""
    if _host_proc is None:
        return pid
    if pid == os.getpid():
        return _host_self
    ours = os.readlink("/proc/self/ns/pid")
    for entry in os.listdir(_host_proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.open(f"{entry}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=_host_proc)) as f:
                nspids = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
            if nspids[-1:] == [str(pid)] and os.readlink(f"{entry}/ns/pid", dir_fd=_host_proc) == ours:
                return int(nspids[0])
        except (OSError, ValueError):
            continue  # gone meanwhile
    return 0


def for_host(vm_record: dict) -> dict:
    """A VM's record (runv.api.VM.record()) with its VMM's PID as the host sees it: what
    ``runv`` reads from the container's state. Its plugin's data keep the namespace's PIDs
    of helpers, which die with the shim."""
    return {**vm_record, "pid": host_pid(vm_record["pid"])} if _host_proc is not None else vm_record

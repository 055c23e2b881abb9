"""A shim's mounts in a mount namespace of its own: the pod directory and the staged volumes
(and what is bound below them) exist for the shim, its VMM and the VMM's helpers only, and
the kernel takes them away with the last of those processes, whichever way it ends: a shim
and VMM killed -9 leave no mount on the host.

The namespace starts as a copy of the caller's, every mount a slave of its original: what
the host mounts later still reaches the shim; nothing the shim mounts reaches the host.
The OCI hooks the shim runs go back to the caller's namespace first, as runc's hooks run
in the runtime's.
"""

from __future__ import annotations

import ctypes
import os

from runv.api.errors import RunvError

CLONE_NEWNS = 0x00020000
MS_REC, MS_SLAVE = 0x4000, 1 << 19
_libc = ctypes.CDLL(None, use_errno=True)
_caller: int | None = None  # the caller's mount namespace (a descriptor), once the shim has left it


def leave() -> None:
    """Moves this process into a mount namespace of its own. Only while it has one thread
    (right after the fork that makes the shim): the kernel refuses it to threaded processes."""
    global _caller
    caller = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if _libc.unshare(CLONE_NEWNS) != 0 or _libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None) != 0:
        err = ctypes.get_errno()
        os.close(caller)
        raise RunvError(f"cannot give the shim a mount namespace of its own: {os.strerror(err)}")
    _caller = caller


def left() -> bool:
    """Whether this process left its caller's mount namespace (:func:`leave`)."""
    return _caller is not None


def back() -> None:
    """Back to the mount namespace this process left, in a child with one thread (a hook's,
    before it execs); nothing when it left none."""
    if _caller is not None and _libc.setns(_caller, CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot return to the caller's mount namespace: {os.strerror(err)}")

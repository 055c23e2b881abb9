"""The mount points a read-only rootfs lacks, made on the host before it is shared.

runc makes a missing mount point (``/etc/resolv.conf`` in a pause image, say) in the rootfs
before its read-only remount; in a VM the rootfs of a ``root.readonly`` container is
shared read-only, so the guest cannot make it. The host makes it instead, as runc would:
a file when the mount's source is not a directory, else a directory, with missing parents. The
rootfs is the image's, so every path is resolved inside it as the container would see it
(``openat2`` with ``RESOLVE_IN_ROOT``: a symlink, absolute or relative, cannot lead out of
it; docs/security.md)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from pathlib import Path

from runv.agent.tables import is_bind
from runv.api.errors import RunvError

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10
GUEST_MADE = ("/proc", "/sys", "/dev")  # the agent mounts these; what is below them is made in the guest
MAX_HOPS = 40  # dangling symlinks followed on the way to one mount point, as the kernel's MAXSYMLINKS
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _open_in(root: int, path: str, flags: int) -> int:
    """``path`` opened relative to the directory ``root``, resolved as if ``root`` were ``/``."""
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, root, os.fsencode(path), how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def make(rootfs: Path, spec_mounts) -> None:
    """Makes, inside ``rootfs``, each mount point of ``spec_mounts`` that does not exist yet,
    and ``/proc``, ``/sys`` and ``/dev``, which the agent mounts whatever the spec says."""
    wanted = {top: False for top in GUEST_MADE}
    for entry in spec_mounts or ():
        destination = os.path.normpath("/" + str(entry.get("destination") or "").lstrip("/"))
        if destination == "/" or any(destination.startswith(top + "/") for top in GUEST_MADE):
            continue  # what is below them is made in the guest's proc, sysfs and /dev tmpfs
        source = entry.get("source")
        wanted[destination] = is_bind(entry) and isinstance(source, str) and not os.path.isdir(source)  # runc: a file
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RunvError(f"rootfs {rootfs}: {exc.strerror}") from None
    try:
        for destination, is_file in wanted.items():
            try:
                _make(root, destination, is_file)
            except OSError as exc:
                raise RunvError(f"cannot make the mount point {destination} in the read-only rootfs {rootfs}: "
                                f"{exc.strerror}") from None
    finally:
        os.close(root)


def _make(root: int, path: str, is_file: bool) -> None:
    """``path`` made inside ``root`` unless something is there: missing directories on the
    way, the last component an empty file or a directory. The kernel resolves every prefix
    (``..`` and symlinks included, never above ``root``); a dangling symlink on the way is
    followed by hand, as the kernel would, to make what it names, at most MAX_HOPS times."""
    parts = [part for part in path.split("/") if part]
    done, hops = "", 0  # the prefix made or found so far, as the kernel resolves it inside root
    while parts:
        part = parts.pop(0)
        candidate = f"{done}/{part}"
        try:
            os.close(_open_in(root, candidate, os.O_PATH))
            done = candidate
            continue
        except FileNotFoundError:
            pass
        parent = _open_in(root, done or "/", os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                found = os.stat(part, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                found = None
            if found is not None and stat.S_ISLNK(found.st_mode):
                hops += 1
                if hops > MAX_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                link = os.readlink(part, dir_fd=parent)
                parts[:0] = [p for p in link.split("/") if p]
                done = "" if link.startswith("/") else done
                continue
            if not parts and is_file:
                os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755, dir_fd=parent))
            else:
                os.mkdir(part, 0o755, dir_fd=parent)
            done = candidate
        finally:
            os.close(parent)

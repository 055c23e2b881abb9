"""The mount points a read-only rootfs lacks, made on the host before it is shared.

runc makes a missing mount point (``/etc/resolv.conf`` in a pause image, say) in the rootfs
before its read-only remount; in a VM the rootfs of a ``root.readonly`` container is
shared read-only, so the guest cannot make it. The host makes it instead, as runc would:
a file when the mount's source is a file, else a directory, with missing parents. The
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
GUEST_MADE = ("/proc", "/sys", "/dev")  # the agent mounts these (and /dev's contents) itself
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
    """Makes, inside ``rootfs``, each mount point of ``spec_mounts`` that does not exist yet."""
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RunvError(f"rootfs {rootfs}: {exc.strerror}") from None
    try:
        for entry in spec_mounts or ():
            destination = os.path.normpath("/" + str(entry.get("destination") or "").lstrip("/"))
            if destination == "/" or any(destination == top or destination.startswith(top + "/") for top in GUEST_MADE):
                continue
            source = entry.get("source")
            is_file = is_bind(entry) and isinstance(source, str) and os.path.isfile(source)
            try:
                _make(root, destination, is_file)
            except OSError as exc:
                raise RunvError(f"cannot make the mount point {destination} in the read-only rootfs {rootfs}: "
                                f"{exc.strerror}") from None
    finally:
        os.close(root)


def _make(root: int, path: str, is_file: bool) -> None:
    """``path`` (absolute, inside ``root``) made unless something is there: its missing
    parents as directories, itself as an empty file or a directory."""
    try:
        os.close(_open_in(root, path, os.O_PATH))
        return
    except FileNotFoundError:
        pass
    parent, name = os.path.split(path)
    if parent != "/":
        _make(root, parent, False)
    folder = _open_in(root, parent, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            if is_file:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755,
                                 dir_fd=folder))
            else:
                os.mkdir(name, 0o755, dir_fd=folder)
        except FileExistsError:
            if not stat.S_ISLNK(os.lstat(name, dir_fd=folder).st_mode):
                return  # made meanwhile
            # a dangling symlink: what it names, inside the rootfs, is the mount point
            link = os.readlink(name, dir_fd=folder)
            target = os.path.normpath("/" + os.path.join(parent, link).lstrip("/"))  # join keeps an absolute link
            if target.count("/") > 64 or target == path:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from None
            _make(root, target, is_file)
    finally:
        os.close(folder)

"""The pod directory: how a container that joins a running VM brings its rootfs and volumes in.

Every VM is booted with one more share, ``pod``: ``<state>/pod``, a small tmpfs of its own
(a shared mount, so what is mounted below it later reaches the VMM's jail, whose copy is a
slave of it), mounted at ``/run/runv/pod`` in the guest. A container joining the VM (a
*member*, :mod:`runv.shim.member`) has each of its shares (its rootfs, its staged volumes)
mounted at ``<state>/pod/<member id>/<tag>`` by the sandbox's shim, and its mount plan is
rewritten to bind them from ``/run/runv/pod/<member id>/<tag>`` in the guest (Kata's model:
one shared directory per VM, filled by the host).

The guest can write to that directory (a member's rootfs is writable), so it may have left
symlinks or anything else there: each mount is a detached copy of the source
(``open_tree``), made ``nodev,nosuid`` (and ``ro`` for a read-only share) *before* it is
attached (the jail's copy takes its flags when it propagates), and attached with
``move_mount`` onto a directory opened without following symlinks (docs/security.md).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from pathlib import Path

from runv.api.errors import RunvError
from runv.api.vm import SERIAL, SHARE, GuestMount, Share
from runv.shim import volumes

TAG = "pod"  # the share's tag, in every VM
GUEST = "/run/runv/pod"  # where the guest mounts it
TMPFS = "mode=0700,size=1m,nr_inodes=4096"  # only directories (the host's) and mount points live there
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every architecture
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_EMPTY_PATH, AT_RECURSIVE = 1, os.O_CLOEXEC, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MS_SHARED = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def share(state_dir: Path) -> Share:
    """The ``pod`` share of the VM whose state directory is ``state_dir``."""
    return Share(tag=TAG, path=state_dir / TAG)


def guest_mount() -> GuestMount:
    """The guest's mount of the pod share (before the container's rootfs)."""
    return GuestMount.of_share(TAG, target=GUEST)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise RunvError(f"{what}: {os.strerror(err)}")
    return result


def make_dir(state_dir: Path) -> None:
    """``<state>/pod``: a tmpfs of its own, a shared mount, before the VMM starts."""
    path = state_dir / TAG
    path.mkdir(mode=0o700, exist_ok=True)
    raw = os.fsencode(path)
    _check(_libc.mount(b"tmpfs", raw, b"tmpfs", 0, TMPFS.encode()), f"mounting a tmpfs on {path}")
    _check(_libc.mount(None, raw, None, MS_SHARED, None), f"making {path} a shared mount")


def attach(state_dir: Path, member: str, shares: list) -> None:
    """Mounts each ``[tag, host path, readonly]`` of ``member`` at ``<state>/pod/<member>/<tag>``;
    on a failure what was mounted is unmounted and a RunvError names the share."""
    pod = os.open(state_dir / TAG, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        folder = _make_child(pod, member, f"the pod directory of {state_dir.name}")
        try:
            for tag, source, readonly in shares:
                target = _make_child(folder, tag, f"the pod directory of {member}")
                try:
                    _mount_copy(source, target, bool(readonly))
                finally:
                    os.close(target)
        except BaseException:
            detach(state_dir, member)
            raise
        finally:
            os.close(folder)
    finally:
        os.close(pod)


def _make_child(parent: int, name: str, where: str) -> int:
    """A new directory ``name`` under ``parent``, opened without following symlinks: one
    already there (the guest's) is refused, not reused."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileExistsError:
        raise RunvError(f"{where} already holds {name!r} (left by the guest or a container of that id)") from None
    except OSError as exc:
        raise RunvError(f"{where}: cannot make {name!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunvError(f"{where}: {name!r} was replaced while it was made")
    return fd


def _mount_copy(source: str, target: int, readonly: bool) -> None:
    """A detached recursive copy of the mount tree at ``source``, made nodev,nosuid (and
    read-only) first, then attached on the directory ``target`` (an O_PATH descriptor)."""
    fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tree = _check(_libc.syscall(SYS_OPEN_TREE, fd, b"", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH),
                      f"copying the mounts of {source}")
    finally:
        os.close(fd)
    try:
        attr = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | (MOUNT_ATTR_RDONLY if readonly else 0)
        buffer = struct.pack("QQQQ", attr, 0, 0, 0)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, buffer, len(buffer)),
               f"restricting the copy of {source}")
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", target, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
               f"mounting {source} in the pod directory")
    finally:
        os.close(tree)


def detach(state_dir: Path, member: str) -> None:
    """Unmounts what :func:`attach` mounted for ``member`` and removes its directory; converges."""
    folder = state_dir / TAG / member
    volumes.release(folder)
    try:
        for entry in os.listdir(folder):
            os.rmdir(folder / entry)
        os.rmdir(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY):
            raise


def member_mount(entry: GuestMount, member: str) -> dict:
    """One entry of a member's mount plan as the sandbox's guest makes it: a share becomes
    a bind from the pod directory, a file volume's staged path the same under it."""
    fields = {"source": entry.source, "fstype": entry.fstype, "options": entry.options, "readonly": entry.readonly,
              "target": entry.target, "in_rootfs": entry.in_rootfs}
    if entry.source.startswith(SERIAL):
        raise RunvError(f"container {member}: a container that joins another's VM takes no disks ({entry.source}); "
                        f"use the share storage mode (io.runv.storage.mode=share)")
    if entry.fstype == SHARE:
        fields.update(source=f"{GUEST}/{member}/{entry.source}", fstype="bind")
    elif entry.fstype == "bind" and entry.source.startswith(volumes.STAGING + "/"):
        fields["source"] = f"{GUEST}/{member}/{entry.source[len(volumes.STAGING) + 1:]}"
    return fields


def member_mounts(entries, member: str) -> list[dict]:
    """A member's mount plan: its file volumes' staging shares need no mount (the pod
    directory shows them), the rest as :func:`member_mount` makes them."""
    return [member_mount(e, member) for e in entries if e.in_rootfs or e.fstype != SHARE]

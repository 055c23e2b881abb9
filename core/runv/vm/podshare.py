"""The pod directory: how every container's rootfs and volumes reach its VM.

A VM whose hypervisor shares directories has exactly one share, ``pod``: ``<state>/pod``,
a small tmpfs of its own (a shared mount, so what is mounted below it later reaches the
VMM's jail, whose copy is a slave of it), mounted at ``/run/runv/pod`` in the guest. Each
container in the VM, the one that booted it and each that joins it later (a *member*,
:mod:`runv.shim.member`), has its shares (its rootfs, its staged volumes) mounted at
``<state>/pod/<container id>/<tag>`` (in the shim's mount namespace: :mod:`runv.vm.mountns`;
a member's shim copies its mounts and hands the copies to the sandbox's), and its mount plan rewritten to bind them
from ``/run/runv/pod/<container id>/<tag>`` in the guest (Kata's model: one shared
directory per VM, filled by the host). So a VM's devices do not depend on how many
volumes its containers have, and one template serves them all (docs/templates.md).

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
from runv.api.vm import SHARE, GuestMount, Share
from runv.log import logger
from runv.vm import volumes

TAG = "pod"  # the share's tag, in every VM
GUEST = "/run/runv/pod"  # where the guest mounts it
# only directories (the host's) and mount points live there; 0711 so a container's root in a
# user namespace (an unmapped "other" to the guest) can reach its binds through them
TMPFS = "mode=0711,size=1m,nr_inodes=4096"
FOLDER_MODE = 0o711
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every architecture
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_EMPTY_PATH, AT_RECURSIVE = 1, os.O_CLOEXEC, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SHARED = 2, 4, 8, 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def share(state_dir: Path) -> Share:
    """The ``pod`` share of the VM whose state directory is ``state_dir``."""
    return Share(tag=TAG, path=state_dir / TAG, holds_mounts=True)


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
    _check(_libc.mount(b"tmpfs", raw, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, TMPFS.encode()), f"mounting a tmpfs on {path}")
    _check(_libc.mount(None, raw, None, MS_SHARED, None), f"making {path} a shared mount")


def copies(shares) -> list[tuple[str, int]]:
    """``(tag, tree)`` for each :class:`Share`: a detached copy of its source (:func:`copy`),
    made in the caller's mount namespace, to attach in the pod directory, maybe by another
    process (a pod member's trees go to its sandbox's shim); the caller closes them."""
    trees: list[tuple[str, int]] = []
    try:
        for item in shares:
            trees.append((item.tag, copy(str(item.path), item.readonly)))
    except BaseException:
        for _, tree in trees:
            os.close(tree)
        raise
    return trees


def attach(state_dir: Path, member: str, trees: list[tuple[str, int]]) -> None:
    """Mounts each ``(tag, tree)`` of ``member`` (a detached mount tree: :func:`copies`) at
    ``<state>/pod/<member>/<tag>``; on a failure what was mounted is unmounted and a
    RunvError names the share."""
    pod = os.open(state_dir / TAG, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        folder = _make_child(pod, member, f"the pod directory of {state_dir.name}")
        try:
            for tag, tree in trees:
                target = _make_child(folder, tag, f"the pod directory of {member}")
                try:
                    _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", target, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
                           f"mounting share {tag} of {member} in the pod directory")
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
        os.mkdir(name, FOLDER_MODE, dir_fd=parent)
        fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileExistsError:
        raise RunvError(f"{where} already holds {name!r} (left by the guest or a container of that id)") from None
    except OSError as exc:
        raise RunvError(f"{where}: cannot make {name!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunvError(f"{where}: {name!r} was replaced while it was made")
    return fd


def copy(source: str, readonly: bool) -> int:
    """A detached recursive copy of the mount tree at ``source`` (a descriptor), made
    nodev,nosuid (and read-only) before anyone can attach it."""
    try:
        fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RunvError(f"cannot share {source} with the VM: {exc.strerror}") from None
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
    except BaseException:
        os.close(tree)
        raise
    return tree


def detach(state_dir: Path, member: str) -> None:
    """Unmounts what :func:`attach` mounted for ``member`` and removes its directory; converges.
    Nothing in the pod directory is followed: an entry that is not the directory the host
    made (the VMM's jail has it read-only, but a guest is never trusted) is left alone."""
    folder = state_dir / TAG / member
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            logger.error("%s is not the directory runv made: left alone", folder)
            return
    except FileNotFoundError:
        return
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


def in_pod(entry: GuestMount, container_id: str) -> GuestMount:
    """One entry of a container's mount plan as the guest makes it when the container's
    shares are in the pod directory: a share becomes a bind from ``/run/runv/pod/<id>/<tag>``,
    a file volume's staged path the same under it; disks and guest filesystems stay."""
    if entry.fstype == SHARE:
        return entry.evolve(source=f"{GUEST}/{container_id}/{entry.source}", fstype="bind")
    if entry.fstype == "bind" and entry.source.startswith(volumes.STAGING + "/"):
        return entry.evolve(source=f"{GUEST}/{container_id}/{entry.source[len(volumes.STAGING) + 1:]}")
    return entry


def plan_in_pod(entries, container_id: str) -> list[GuestMount]:
    """A container's mount plan with its shares in the pod directory: its file volumes'
    staging shares need no mount of their own (the pod share shows them), the rest as
    :func:`in_pod` makes them."""
    staging = volumes.STAGING + "/"
    return [in_pod(e, container_id) for e in entries if not (e.fstype == SHARE and e.target.startswith(staging))]

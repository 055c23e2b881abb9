"""Disk images for storage plugins (the block modes of overlay, devicemapper's bases).

* :func:`base_image`: a rootfs as an ext4 image (``mkfs.ext4 -d``), built once per content and
  cached under a cache directory as ``base-<hash>.ext4``, read-only. Builds run under an
  exclusive lock on ``<cache>/.lock``, into a temporary file renamed into place on success,
  so a build that fails half-way (or a crashed one) never leaves a usable-looking image.
* :func:`overlay_qcow2`: a per-container qcow2 whose backing file is the base (raw): the
  container's writes land in the qcow2, the base is never written.
* :func:`empty_ext4`: a sparse, freshly formatted ext4 file (the overlay mode's upper layer).

The content hash covers every path's type, mode, owner, size, symlink target and file bytes,
so two bundles with equal trees share one image, and any change makes a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runv.api.errors import RunvError
from runv.api.tools import run_tool

MKFS = "mkfs.ext4"
# The files are sparse (they read as zeros), so the inode tables and journal need no zeroing:
# a 2 GiB base takes a few MiB on disk instead of its 64 MiB journal.
LAZY = "lazy_itable_init=1,lazy_journal_init=1"
QEMU_IMG = "qemu-img"
HINTS = {MKFS: "apt-get install e2fsprogs", QEMU_IMG: "apt-get install qemu-utils"}
HEADROOM = 256 << 20  # free space a base image gets beyond its content (the writable space)
LOCK = ".lock"


def missing_tools(*tools: str) -> str | None:
    """One line naming the tools that are not installed (with how to get them), or None."""
    missing = [f"{tool} ({HINTS.get(tool, 'install it')})" for tool in tools if shutil.which(tool) is None]
    return f"missing: {', '.join(missing)}" if missing else None


@contextmanager
def locked(directory: Path, name: str = LOCK) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory/name`` (created) for the block's duration."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def tree_digest(root: Path) -> tuple[str, int]:
    """(sha256 of the tree's content and metadata, bytes of file content) for ``root``."""
    digest = hashlib.sha256()
    total = 0
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            relative = os.path.relpath(path, root)
            digest.update(f"{relative}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                digest.update(f"{st.st_rdev}".encode())
            digest.update(b"\n")
    return digest.hexdigest(), total


def image_size(content: int, minimum: int) -> int:
    """A sparse image size for ``content`` bytes: twice the content plus headroom, at least
    ``minimum``, rounded up to a MiB."""
    size = max(minimum, 2 * content + HEADROOM)
    return (size + (1 << 20) - 1) // (1 << 20) * (1 << 20)


def base_image(rootfs: Path, cache_dir: Path, minimum_size: int) -> Path:
    """The cached ext4 image of ``rootfs``, built now when there is none."""
    if not rootfs.is_dir():
        raise RunvError(f"cannot build a base image: rootfs {rootfs} is not a directory")
    key, content = tree_digest(rootfs)
    size = image_size(content, minimum_size)
    image = cache_dir / f"base-{key[:32]}-{size >> 20}M.ext4"
    if image.is_file():
        return image
    with locked(cache_dir):
        if image.is_file():  # built by a concurrent create while we waited
            return image
        for stale in cache_dir.glob(".base-*.tmp"):  # a build that crashed: the lock is ours now
            stale.unlink(missing_ok=True)
        temporary = cache_dir / f".{image.name}.{os.getpid()}.tmp"
        try:
            with open(temporary, "wb") as f:
                f.truncate(size)
            run_tool([MKFS, "-q", "-F", "-E", LAZY, "-L", "runv-base", "-d", str(rootfs), str(temporary)],
                     f"cannot build the base image of {rootfs} ({size >> 20} MiB)", install=HINTS[MKFS])
            os.chmod(temporary, 0o444)  # nothing writes a base: qemu opens backing files read-only
            os.replace(temporary, image)
        finally:
            temporary.unlink(missing_ok=True)
    return image


def overlay_qcow2(base: Path, path: Path) -> Path:
    """A new qcow2 at ``path`` backed by ``base`` (raw); replaces a stale one."""
    path.unlink(missing_ok=True)
    run_tool([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(path)],
             f"cannot create the container's disk overlay {path}", install=HINTS[QEMU_IMG])
    return path


def empty_ext4(path: Path, size: int, label: str) -> Path:
    """A sparse file of ``size`` bytes at ``path``, formatted as ext4 (lazily: fast)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    try:
        run_tool([MKFS, "-q", "-F", "-E", LAZY, "-L", label, str(path)], f"cannot format {path}", install=HINTS[MKFS])
    except RunvError:
        path.unlink(missing_ok=True)
        raise
    return path

"""An in-memory file tree written out as a ``newc`` cpio archive, the format the kernel unpacks as initramfs.

Every entry is owned by root (uid/gid 0) and has mtime 0, so the same tree always gives the same bytes.
Paths are stored without the leading slash; parent directories are created as needed and always
precede their children in the archive, since the kernel does not create missing parents.
"""

import stat
from typing import BinaryIO

from runv.api.frozen import Frozen

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class Entry(Frozen):
    """One archive member: ``mode`` carries the file type bits; ``data`` is the content or symlink target."""

    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


class Archive:
    """A tree of initramfs entries keyed by relative path."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        """Add a directory (a no-op if it is already there)."""
        self._add(path, Entry(stat.S_IFDIR | mode))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self._add(path, Entry(stat.S_IFREG | mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        """Add a symbolic link pointing at ``target``."""
        self._add(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node (e.g. /dev/console, 5:1)."""
        self._add(path, Entry(stat.S_IFCHR | mode, rdev=(major, minor)))

    def _add(self, path: str, entry: Entry) -> None:
        """Insert ``entry`` after its missing parents; adding the same entry twice is fine, a different one is not."""
        name = path.strip("/")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            existing = self.entries.setdefault(parent, Entry(stat.S_IFDIR | 0o755))
            if not stat.S_ISDIR(existing.mode):
                raise ValueError(f"initrd path {parent!r} is not a directory, cannot add {name!r}")
        existing = self.entries.setdefault(name, entry)
        if existing != entry:
            raise ValueError(f"initrd path {name!r} added twice with different contents")

    def write(self, out: BinaryIO) -> None:
        """Write the tree as a newc archive, parents before children, then the trailer."""
        for ino, name in enumerate(sorted(self.entries, key=lambda n: n.split("/")), start=1):
            entry = self.entries[name]
            nlink = 2 if stat.S_ISDIR(entry.mode) else 1
            _write_member(out, name, entry, ino, nlink)
        _write_member(out, TRAILER, Entry(0), 0, 1)


def _write_member(out: BinaryIO, name: str, entry: Entry, ino: int, nlink: int) -> None:
    """Write one header, its NUL-terminated name and its data, each padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(encoded), 0)
    header = MAGIC + b"".join(b"%08X" % value for value in fields) + encoded
    out.write(header + _padding(len(header)))
    out.write(entry.data + _padding(len(entry.data)))


def _padding(length: int) -> bytes:
    """NUL bytes that bring ``length`` up to a multiple of 4."""
    return b"\0" * (-length % 4)

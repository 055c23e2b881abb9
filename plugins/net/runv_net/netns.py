"""Network namespaces: validating a path, making the shim's own, finding one again, and
running a function inside one without moving the calling thread (or QEMU) into it.

Only ctypes and the standard library here; pyroute2 is imported by :mod:`runv_net.wire`.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import threading
from typing import Callable, TypeVar

from runv.api import Frozen, RunvError, to_json

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace an nsfs file is
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class Namespace(Frozen):
    """A network namespace: a path that reaches it now, and its identity (device, inode),
    which outlives the path (``/proc/<pid>/ns/net`` goes when the process does)."""

    path: str
    dev: int
    ino: int
    private: bool = False  # the shim's own, made by unshare (no path in config.json)

    @classmethod
    def open(cls, path: str, private: bool = False) -> Namespace:
        """The namespace at ``path``; a one-line RunvError when it is missing or not a netns."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RunvError(f"network namespace {path} does not exist") from None
        except OSError as exc:
            raise RunvError(f"cannot open network namespace {path}: {exc.strerror}") from None
        try:
            try:
                kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
            except OSError:
                kind = None
            if kind != CLONE_NEWNET:
                raise RunvError(f"{path} is not a network namespace (linux.namespaces type network)")
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return cls(path=path, dev=st.st_dev, ino=st.st_ino, private=private)

    def to_json(self) -> dict:
        return to_json(self)


def unshare_net() -> Namespace:
    """Moves the calling thread (the shim's main thread, so ``/proc/<shim pid>/ns/net``)
    into a fresh network namespace and returns it."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise RunvError(f"cannot create a network namespace for the container: {os.strerror(err)}")
    return Namespace.open(f"/proc/{os.getpid()}/ns/net", private=True)


def locate(dev: int, ino: int, hint: str | None) -> str | None:
    """A path that reaches the namespace (dev, ino) now, or None when none is found (it is
    gone, or held only by open file descriptors). Tries ``hint``, then namespace files
    bind-mounted anywhere (``ip netns``, Docker, CNI), then every process's ``ns/net``."""

    def matches(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (dev, ino)

    if hint and matches(hint):
        return hint
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] == "nsfs" and matches(_unescape(fields[4])):
                    return _unescape(fields[4])
    except (OSError, ValueError, IndexError):
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit() and matches(f"/proc/{entry}/ns/net"):
            return f"/proc/{entry}/ns/net"
    return None


def _unescape(path: str) -> str:
    """A mountinfo path field, with its octal escapes (``\\040`` for space) decoded."""
    return path.encode().decode("unicode_escape") if "\\" in path else path


def run_in(path: str, func: Callable[[], T]) -> T:
    """Runs ``func`` in a helper thread that has joined the namespace at ``path``; the
    calling thread (and so any process it starts later) stays where it is."""
    result: dict = {}

    def work() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=work, name="runv-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


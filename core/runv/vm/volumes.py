"""The spec's ``mounts`` (volumes) as shares for the VM and entries of the agent's mount plan.

* ``bind`` mounts (type ``bind``, or options holding ``bind``/``rbind``): a directory is
  bind-mounted (in the shim's mount namespace, with what is mounted below it) onto ``volumes/volN`` under the
  container's state, that directory is the share ``volN`` (which reaches the guest through
  the VM's pod directory, :mod:`runv.vm.podshare`) and is mounted at its destination in the
  container. A file is bind-mounted into a directory of its own (``volumes/volN/NAME``),
  that directory is the share, outside the container's root in the guest, and the file
  bind-mounted from there: the guest never sees the file's neighbours. ``ro`` makes the
  share (its copy in the pod directory is a read-only mount) and the guest mount
  read-only. Writes to a ``rw`` volume land in the host's file or directory.
* A host device node is never shared: ``/dev/null`` and the other pseudo-devices (which
  callers bind over masked paths) are bound from the guest's own; other devices are refused.
* ``tmpfs``, ``proc``, ``sysfs``, ``devpts``, ``mqueue``, ``cgroup``/``cgroup2`` are mounted in
  the guest. ``/proc``, ``/sys``, ``/dev`` and ``/dev/pts`` are already mounted by the agent
  (``/dev`` as devtmpfs, which holds the guest's device nodes), so entries for exactly those are
  skipped.
* Any other type is refused before the VM boots, with one line naming the entry.

Bind sources are opened without following symlinks in any component (:func:`open_nofollow`:
``O_PATH|O_NOFOLLOW`` one component at a time), so a symlink an untrusted image or a
previous container left on the way is refused, not followed; a volume (file or directory)
is bind-mounted into its staging place through that very descriptor (``/proc/self/fd/N``),
so what was checked is what is mounted, and the VMM only ever sees that mount, never the
source path (docs/security.md).
"""

from __future__ import annotations

import ctypes
import os
import re
import stat
from pathlib import Path

from runv.agent.tables import is_bind
from runv.api.errors import RunvError
from runv.api.vm import GuestMount, Share

GUEST_TYPES = ("tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2")
AGENT_MOUNTS = {"/proc": "proc", "/sys": "sysfs", "/dev": "tmpfs", "/dev/pts": "devpts"}
STAGING = "/run/runv/volumes"
PSEUDO_DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
FLAGS = {"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync", "noatime",
         "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime", "newinstance"}


MS_BIND, MS_REC = 4096, 16384
MNT_DETACH = 2
_OCTAL = re.compile(rb"\\([0-7]{3})")  # how /proc/self/mountinfo escapes space, tab, newline and backslash
_libc = ctypes.CDLL(None, use_errno=True)


def open_nofollow(path: str, what: str) -> int:
    """An ``O_PATH`` descriptor of the absolute ``path``, walked one component at a time with
    ``O_NOFOLLOW``: a symlink anywhere on the way is refused (RunvError naming it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RunvError(f"{what} {path}: '..' is not allowed in a bind source")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            try:
                child = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                raise RunvError(f"{what} {path} does not exist") from None
            except OSError as exc:
                raise RunvError(f"{what} {path}: {exc.strerror}") from None
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                where = "/" + "/".join(parts[: index + 1])
                raise RunvError(f"{what} {path}: {where} is a symbolic link; symlinks are not followed in bind "
                                f"sources (give the real path: {os.path.realpath(path)})")
        return fd
    except BaseException:
        os.close(fd)
        raise


def bind_fd(fd: int, target: Path, recursive: bool = False) -> None:
    """Bind-mounts what ``fd`` (an ``O_PATH`` descriptor) names onto ``target`` (with the
    mounts below it when ``recursive``)."""
    flags = MS_BIND | (MS_REC if recursive else 0)
    if _libc.mount(f"/proc/self/fd/{fd}".encode(), os.fsencode(target), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def mount_options(options: list[str]) -> list[str]:
    """The options the guest's mount understands: flags and ``key=value`` (propagation,
    ``bind``, and runtime-specific words such as ``tmpcopyup`` are dropped)."""
    return [o for o in options if o in FLAGS or ("=" in o and not o.startswith(("idmap", "uidmap", "gidmap")))]


def plan(
    spec_mounts, staging: Path, where: str = "config.json"
) -> tuple[tuple[Share, ...], tuple[GuestMount, ...], tuple[tuple[Path, Path], ...]]:
    """Shares, mount-plan entries and host bind mounts (source -> its place under ``staging``)
    for the spec's mounts; raises RunvError for the first entry runv cannot honour."""
    shares: dict[tuple[str, bool], Share] = {}
    mounts: list[GuestMount] = []
    host_binds: list[tuple[Path, Path]] = []

    def share(source: Path, readonly: bool, is_dir: bool) -> str:
        """The share staging ``source`` (a directory itself, a file in a folder of its own)."""
        key = (str(source), readonly)
        if key not in shares:
            folder = staging / f"vol{len(shares)}"
            shares[key] = Share(tag=folder.name, path=folder, readonly=readonly)
            host_binds.append((source, folder if is_dir else folder / source.name))
        return shares[key].tag

    for index, entry in enumerate(spec_mounts or ()):
        name = f"{where}: mounts[{index}]"
        if not isinstance(entry, dict):
            raise RunvError(f"{name} must be an object")
        destination = entry.get("destination")
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise RunvError(f"{name}.destination must be an absolute path, not {destination!r}")
        destination = os.path.normpath(destination)
        options = entry.get("options") or []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise RunvError(f"{name}.options must be a list of strings")
        kind = entry.get("type") or ""
        readonly = "ro" in options
        flags = [o for o in mount_options(options) if o not in ("ro", "rw")]
        if is_bind(entry):
            source = entry.get("source")
            if not isinstance(source, str) or not source.startswith("/"):
                raise RunvError(f"{name}.source of a bind mount must be an absolute host path, not {source!r}")
            path = Path(os.path.normpath(source))
            fd = open_nofollow(str(path), f"{name}: bind source")
            try:
                mode = os.fstat(fd).st_mode
            finally:
                os.close(fd)
            if stat.S_ISDIR(mode):
                tag = share(path, readonly, is_dir=True)
                mounts.append(GuestMount.of_share(tag, options=",".join(flags), readonly=readonly,
                                         target=destination, in_rootfs=True))
            elif stat.S_ISREG(mode):
                tag = share(path, readonly, is_dir=False)
                mounts.append(GuestMount.of_share(tag, readonly=readonly, target=f"{STAGING}/{tag}"))
                mounts.append(GuestMount(source=f"{STAGING}/{tag}/{path.name}", fstype="bind", options=",".join(flags),
                                         readonly=readonly, target=destination, in_rootfs=True))
            elif str(path) in PSEUDO_DEVICES:
                mounts.append(GuestMount(source=str(path), fstype="bind", options=",".join(flags), readonly=readonly,
                                         target=destination, in_rootfs=True))
            else:
                raise RunvError(f"{name}: bind source {source} is a device, socket or fifo: a VM has only its own devices")
            continue
        if kind not in GUEST_TYPES:
            raise RunvError(
                f"{name}: mount type {kind or '(none)'!r} at {destination} is not supported by runv "
                f"(supported: bind, {', '.join(GUEST_TYPES)})"
            )
        if destination in AGENT_MOUNTS:
            continue  # the agent mounts these itself
        fstype = "cgroup2" if kind == "cgroup" else kind
        source = entry.get("source") if isinstance(entry.get("source"), str) and entry.get("source") else kind
        mounts.append(GuestMount(source=source, fstype=fstype, options=",".join(flags), readonly=readonly,
                                 target=destination, in_rootfs=True))
    # guest-level staging mounts go first; order inside the rootfs is the spec's
    return tuple(shares.values()), tuple(mounts), tuple(host_binds)


def stage(host_binds) -> None:
    """Bind-mounts each volume onto its staging place (made here) for sharing: opened again
    without following symlinks, checked to be a directory or a regular file, mounted by
    descriptor (a directory with what is mounted below it)."""
    for source, target in host_binds:
        fd = open_nofollow(str(source), "volume")
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                target.mkdir(parents=True, exist_ok=True)
            elif stat.S_ISREG(mode):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            else:
                raise RunvError(f"volume {source} is no longer a directory or a regular file")
            bind_fd(fd, target, recursive=stat.S_ISDIR(mode))
        except OSError as exc:
            raise RunvError(f"cannot stage volume {source}: {exc.strerror}") from None
        finally:
            os.close(fd)


def release(state_dir: Path) -> None:
    """Unmounts every host mount left under a container's state directory (newest first);
    converges after a crash, and must run before the directory is removed. Mount points are
    read as bytes (a name under the pod directory need not be UTF-8)."""
    prefix = os.fsencode(state_dir.resolve()) + b"/"
    with open("/proc/self/mountinfo", "rb") as f:
        points = [_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), line.split()[4]) for line in f]
    for point in reversed([p for p in points if p.startswith(prefix)]):
        if _libc.umount2(point, 0) != 0:
            _libc.umount2(point, MNT_DETACH)

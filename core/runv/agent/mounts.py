"""Mounting: mount(2) through ctypes, the container's rootfs, /dev and the host's mount plan (op_prepare)."""

import ctypes
import errno
import os
import stat
import time

from runv.agent.errors import RequestError
from runv.agent.sysfs import wait_for_device

SERIAL_PREFIX = "serial:"  # a mount source naming a virtio-blk disk by its serial
PRIVATE = "/run/runv"  # the guest's staging area (shares mounted before the rootfs); Agent.private on this machine
BINDS = PRIVATE + "/binds"  # in a VM: the shares the container's binds come from, one directory per bind
SYSFS = PRIVATE + "/sysfs"  # in a VM: a sysfs with nothing mounted below it, for a user namespace's /sys
DISK_TIMEOUT = 10.0  # seconds a hot-plugged disk may take to show up in /sys/block
SHARE_TIMEOUT = 10.0  # seconds a hot-plugged share (a template clone's) may take to show its tag
SHARE_FSTYPES = ("9p", "virtiofs")
NO_TAG = (errno.ENOENT, errno.EINVAL)  # what 9p and virtio-fs answer for a tag no device has (yet)
MOUNT_FLAGS = {  # <sys/mount.h>: options that are flags, not filesystem data
    "ro": 1, "rw": 0, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "remount": 32, "mand": 64,
    "dirsync": 128, "noatime": 1024, "nodiratime": 2048, "bind": 4096, "rbind": 4096 | 16384,
    "relatime": 1 << 21, "strictatime": 1 << 24, "suid": 0, "dev": 0, "exec": 0, "async": 0,
    "atime": 0, "diratime": 0, "norelatime": 0, "defaults": 0,
}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 8, 32, 4096, 8192, 16384
PROPAGATION = {"private": 1 << 18, "slave": 1 << 19, "shared": 1 << 20, "unbindable": 1 << 17}
PROPAGATION_OPTIONS = {**{name: flag for name, flag in PROPAGATION.items()},
                       **{"r" + name: flag | MS_REC for name, flag in PROPAGATION.items()}}
DEVICES = {"null": (1, 3), "random": (1, 8), "full": (1, 7), "tty": (5, 0), "zero": (1, 5), "urandom": (1, 9)}  # runc's order
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "core": "/proc/kcore"}
DEV_OPTIONS = "nosuid,mode=755,size=65536k"  # runv's /dev, /dev/pts and /dev/shm where the spec has none
DEVPTS_OPTIONS = "newinstance,ptmxmode=0666,mode=620,gid=5"
SHM_OPTIONS = "nosuid,nodev,noexec,mode=1777,size=65536k"
GUEST_FSTYPES = ("tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "devtmpfs", "bind")
_libc = ctypes.CDLL(None, use_errno=True)


def parse_options(options) -> tuple:
    """``(flags, data, propagation)`` of ``mount -o`` style options (a string or a list):
    flags and propagation are split from the filesystem's data; words that are neither
    (runtime words such as ``tmpcopyup``) are dropped, as runv.vm.volumes drops them."""
    words = options.split(",") if isinstance(options, str) else list(options)
    flags, data, propagation = 0, [], []
    for option in filter(None, words):
        if option in MOUNT_FLAGS:
            flags |= MOUNT_FLAGS[option]
        elif option in PROPAGATION_OPTIONS:
            propagation.append(PROPAGATION_OPTIONS[option])
        elif "=" in option or option == "newinstance":
            data.append(option)
    return flags, ",".join(data), propagation


def check(result: int, what: str) -> None:
    """A libc call's result: OSError (with its errno) naming ``what`` unless it is 0."""
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def raw_mount(source, target: str, fstype, flags: int, what: str, data: str | None = None) -> None:
    """mount(2); OSError (with its errno) naming ``what`` on failure."""
    enc = (lambda v: v.encode() if isinstance(v, str) else v)
    check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data or None)), what)


def mount(source: str, target: str, fstype: str, options: str) -> None:
    """mount(2) with ``mount -o`` style options (flags are split from filesystem data);
    a syscall, not a busybox process: under TCG each fork and exec costs tens of ms."""
    flags, data, _ = parse_options(options)
    try:
        raw_mount(source, target, fstype, flags, "mount", data)
    except OSError as exc:
        raise RequestError(f"mount {source} on {target} ({fstype}): {os.strerror(exc.errno)}") from None


def make_dev_nodes(path: str, bind: bool = False) -> None:
    """The standard nodes and symlinks of a container's /dev at ``path`` (runc's default
    devices and setupDevSymlinks); with ``bind`` (a user namespace, where mknod is refused)
    each node is a bind of the guest's own, as runc binds the host's."""
    for name, (major, minor) in DEVICES.items():
        make_node(os.path.join(path, name), stat.S_IFCHR, (major, minor), 0o666, f"/dev/{name}" if bind else None)
    for name, target in DEV_LINKS.items():
        link = os.path.join(path, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)


def make_node(path: str, kind: int, numbers: tuple, mode: int, bind_from: str | None, owner=(0, 0)) -> None:
    """One device node at ``path``: mknod'ed, or a bind of the guest's node ``bind_from``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    if bind_from:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        raw_mount(bind_from, path, None, MS_BIND, f"binding {path}")
        return
    os.mknod(path, kind | 0o600, os.makedev(*numbers))
    os.chmod(path, mode)
    os.chown(path, *owner)


def populate_dev(path: str) -> None:
    """The container's /dev for an agent that does not confine (the host mode): a tmpfs with
    the standard nodes, its own devpts and shm, none of the guest's devices."""
    mount("tmpfs", path, "tmpfs", DEV_OPTIONS)
    make_dev_nodes(path)
    for sub in ("pts", "shm"):
        os.mkdir(os.path.join(path, sub))
    mount("devpts", os.path.join(path, "pts"), "devpts", DEVPTS_OPTIONS)
    mount("shm", os.path.join(path, "shm"), "tmpfs", SHM_OPTIONS)


def staged(agent, path: str) -> str:
    """A guest path in the staging area as this agent has it: itself in a VM, under
    ``--private`` for an agent on the host (the fake VMM)."""
    if path == PRIVATE or path.startswith(PRIVATE + "/"):
        return agent.private + path[len(PRIVATE):]
    return path


def op_prepare(agent, message: dict, rootfs: str, member: str | None = None) -> list | None:
    """Mounts what the rootfs is assembled from (shares, disks) and the rootfs at ``rootfs``.
    In a VM (``agent.confine``) the container's process makes every mount of the spec itself
    (runv.agent.rootfs): here only the shares its binds come from are mounted, under
    /run/runv/binds, and returned as ``[{"target", "source"}]``. The agent on the host
    mounts /proc, /sys, a /dev and the spec's mounts in the rootfs (None is returned).
    A pod ``member`` (a container joining the VM) takes no hostname: it has the VM's."""
    root = message["rootfs"]
    plan = []
    for entry in message.get("mounts", []):
        entry = {**entry, "source": staged(agent, entry["source"]) if entry["fstype"] == "bind" else entry["source"]}
        plan.append(entry if entry.get("in_rootfs") else {**entry, "target": staged(agent, entry["target"])})
    for entry in plan:  # what the rootfs is assembled from: shares, disks (by serial)
        if not entry.get("in_rootfs"):
            plan_mount(entry, entry["target"])
    os.makedirs(rootfs, exist_ok=True)
    options = root.get("options", "")
    confine = getattr(agent, "confine", False)
    if root.get("readonly") and not confine:  # confined: remounted read-only after its mounts, as runc does
        options = ",".join(filter(None, [options, "ro"]))
    if root["fstype"] == "overlay":
        make_overlay_dirs(options)
    if root["fstype"] == "bind":  # a host path (the fake VMM), a member's in the pod share: flags need a remount
        plan_mount({**root, "source": staged(agent, root["source"]), "in_rootfs": True}, rootfs)
    else:
        mount(resolve_source(root["source"]), rootfs, root["fstype"], options)
    if message.get("hostname") and member is None:
        with open("/proc/sys/kernel/hostname", "w") as f:
            f.write(message["hostname"])
    if confine:
        if not os.path.ismount(SYSFS):
            os.makedirs(SYSFS, exist_ok=True)
            mount("sysfs", SYSFS, "sysfs", "nosuid,nodev,noexec")
        return stage_binds(agent, [entry for entry in plan if entry.get("in_rootfs")], member)
    for fstype, target in (("proc", "proc"), ("sysfs", "sys")):
        path = os.path.join(rootfs, target)
        if os.path.isdir(path):
            mount(fstype, path, fstype, "")
    dev = os.path.join(rootfs, "dev")
    if os.path.isdir(dev) and message.get("guest_devices"):  # the VM's own devices, all of them
        mount("devtmpfs", dev, "devtmpfs", "")
        os.makedirs(os.path.join(dev, "pts"), exist_ok=True)
        mount("devpts", os.path.join(dev, "pts"), "devpts", DEVPTS_OPTIONS)
    elif os.path.isdir(dev):
        populate_dev(dev)
    for entry in plan:  # the spec's mounts (volumes, tmpfs, mqueue...), in order
        if entry.get("in_rootfs"):
            plan_mount(entry, rootfs_path(rootfs, entry["target"], entry))
    return None


def stage_binds(agent, entries: list, member: str | None = None) -> list:
    """The sources of the container's bind mounts, in order: a share (9p, virtio-fs, which
    only the agent's namespace can mount) is mounted under /run/runv/binds (a pod member's
    under /run/runv/binds/<id>); a guest path (a staged volume file, /dev/null, a member's
    share in the pod directory) is its own source. Other types are the init's."""
    binds = []
    folder = f"{BINDS}/{member}" if member else BINDS
    for entry in entries:
        if entry["fstype"] == "bind":
            binds.append({"target": entry["target"], "source": entry["source"]})
        elif entry["fstype"] not in GUEST_FSTYPES:
            where = staged(agent, f"{folder}/{len(binds)}")
            plan_mount({**entry, "in_rootfs": False}, where)
            binds.append({"target": entry["target"], "source": where})
    return binds


def disk_by_serial(serial: str, timeout: float = DISK_TIMEOUT) -> str:
    """The /dev node of the virtio-blk disk whose serial is ``serial``."""
    path = wait_for_device("/sys/block", "serial", serial, timeout)
    if path is None:
        raise RequestError(f"no disk with serial {serial!r} in the guest")
    return path


def resolve_source(source: str) -> str:
    return disk_by_serial(source[len(SERIAL_PREFIX):]) if source.startswith(SERIAL_PREFIX) else source


def make_overlay_dirs(options: str) -> None:
    """overlayfs wants its upperdir and workdir to exist (on a fresh upper disk they do not)."""
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key in ("upperdir", "workdir") and value:
            os.makedirs(value, exist_ok=True)


def rootfs_path(rootfs: str, path: str, entry: dict) -> str:
    """``path`` inside the rootfs with symlinks resolved as the container would see them
    (relative to its root, never leading out of it); missing parts are created, the last
    one, as runc makes it, a file when a bind's source is not a directory (a file, a
    device like /dev/null), else a directory."""
    root = os.path.realpath(rootfs)
    parts = [p for p in os.path.normpath("/" + path).split("/") if p]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise RequestError(f"cannot mount on {path}: too many symlinks")
            link = os.readlink(candidate)
            parts[:0] = [p for p in link.split("/") if p]
            current = root if link.startswith("/") else current
            continue
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        current = candidate
    if not os.path.lexists(current):
        source_is_file = entry.get("fstype") == "bind" and not os.path.isdir(resolve_source(entry["source"]))
        if source_is_file:
            os.makedirs(os.path.dirname(current), exist_ok=True)
            os.close(os.open(current, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        else:
            os.makedirs(current, exist_ok=True)
    return current


def plan_mount(entry: dict, target: str) -> None:
    """One entry of the mount plan at ``target`` (an absolute guest path)."""
    source = resolve_source(entry["source"])
    options = entry.get("options", "")
    if not entry.get("in_rootfs"):
        os.makedirs(target, exist_ok=True)
    if entry["fstype"] == "bind":
        words = [word for word in options.split(",") if word]
        flags = [word for word in words if word not in ("bind", "rbind")]
        mount(source, target, "none", "rbind" if "rbind" in words else "bind")  # rbind: the fake VMM's shares
        if entry.get("readonly") or flags:  # bind flags (ro, nosuid...) need a remount
            mount(source, target, "none", ",".join(["remount", "bind", *(["ro"] if entry.get("readonly") else []), *flags]))
        return
    if entry.get("readonly"):
        options = ",".join(filter(None, [options, "ro"]))
    if entry["fstype"] in SHARE_FSTYPES:
        return mount_share(source, target, entry["fstype"], options)
    mount(source, target, entry["fstype"], options)


def mount_share(tag: str, target: str, fstype: str, options: str, timeout: float = SHARE_TIMEOUT) -> None:
    """Mounts the share ``tag``, waiting for its device: a template's clone gets its shares
    hot-plugged as it wakes up, and the PCI bus may not have shown them yet."""
    flags, data, _ = parse_options(options)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return raw_mount(tag, target, fstype, flags, "mount", data)
        except OSError as exc:
            if exc.errno not in NO_TAG or time.monotonic() > deadline:
                raise RequestError(f"mount {tag} on {target} ({fstype}): {os.strerror(exc.errno)}") from None
        time.sleep(0.02)

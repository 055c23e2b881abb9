"""Mounting: mount(2) through ctypes, the container's rootfs, /dev and the host's mount plan (op_prepare)."""

import ctypes
import os
import stat
import time

from runv.agent.errors import AgentError

SERIAL_PREFIX = "serial:"  # a mount source naming a virtio-blk disk by its serial
PRIVATE = "/run/runv"  # the guest's staging area (shares mounted before the rootfs); Agent.private on this machine
DISK_TIMEOUT = 10.0  # seconds a hot-plugged disk may take to show up in /sys/block
MOUNT_FLAGS = {  # <sys/mount.h>: options that are flags, not filesystem data
    "ro": 1, "rw": 0, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "remount": 32, "mand": 64,
    "dirsync": 128, "noatime": 1024, "nodiratime": 2048, "bind": 4096, "rbind": 4096 | 16384,
    "relatime": 1 << 21, "strictatime": 1 << 24, "suid": 0, "dev": 0, "exec": 0, "async": 0,
    "atime": 0, "diratime": 0, "norelatime": 0, "defaults": 0,
}
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "core": "/proc/kcore"}
NAMESPACED = ("proc", "mqueue", "cgroup", "cgroup2")  # mounted in the container's own namespaces
_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str, options: str) -> None:
    """mount(2) with ``mount -o`` style options (flags are split from filesystem data);
    a syscall, not a busybox process: under TCG each fork and exec costs tens of ms."""
    flags, data = 0, []
    for option in filter(None, options.split(",")):
        if option in MOUNT_FLAGS:
            flags |= MOUNT_FLAGS[option]
        else:
            data.append(option)
    joined = ",".join(data).encode() or None
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags), joined) != 0:
        error = ctypes.get_errno()
        raise AgentError(f"mount {source} on {target} ({fstype}): {os.strerror(error)}")


def populate_dev(path: str) -> None:
    """The container's /dev, as runc makes it: a tmpfs with the standard nodes, its own
    devpts and shm, and none of the guest's devices (the agent's port, the disks)."""
    mount("tmpfs", path, "tmpfs", "nosuid,mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        os.mknod(os.path.join(path, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(os.path.join(path, name), 0o666)
    for name, target in DEV_LINKS.items():
        os.symlink(target, os.path.join(path, name))
    for sub in ("pts", "shm", "mqueue"):
        os.mkdir(os.path.join(path, sub))
    os.chmod(os.path.join(path, "shm"), 0o1777)
    mount("devpts", os.path.join(path, "pts"), "devpts", "newinstance,ptmxmode=0666,mode=620,gid=5")
    mount("shm", os.path.join(path, "shm"), "tmpfs", "nosuid,nodev,noexec,mode=1777,size=65536k")


def staged(agent, path: str) -> str:
    """A guest path in the staging area as this agent has it: itself in a VM, under
    ``--private`` for an agent on the host (the fake VMM)."""
    if path == PRIVATE or path.startswith(PRIVATE + "/"):
        return agent.private + path[len(PRIVATE):]
    return path


def op_prepare(agent, message: dict) -> None:
    """Mounts the container rootfs (and /proc, /sys, /dev in it) and sets the hostname."""
    root = message["rootfs"]
    plan = []
    for entry in message.get("mounts", []):
        entry = {**entry, "source": staged(agent, entry["source"]) if entry["fstype"] == "bind" else entry["source"]}
        plan.append(entry if entry.get("in_rootfs") else {**entry, "target": staged(agent, entry["target"])})
    for entry in plan:  # what the rootfs is assembled from: shares, disks (by serial)
        if not entry.get("in_rootfs"):
            plan_mount(entry, entry["target"])
    os.makedirs(agent.rootfs, exist_ok=True)
    options = root.get("options", "")
    if root.get("readonly"):
        options = ",".join(filter(None, [options, "ro"]))
    if root["fstype"] == "overlay":
        make_overlay_dirs(options)
    if root["fstype"] == "bind":  # a host path (the fake VMM): bind flags need a remount, as for volumes
        plan_mount({**root, "in_rootfs": True}, agent.rootfs)
    else:
        mount(resolve_source(root["source"]), agent.rootfs, root["fstype"], options)
    confine = getattr(agent, "confine", False)
    for fstype, target in (("proc", "proc"), ("sysfs", "sys")):
        path = os.path.join(agent.rootfs, target)
        if confine and fstype == "proc":
            continue  # the container's own, mounted in its PID namespace (runv.agent.confine)
        if os.path.isdir(path):
            mount(fstype, path, fstype, "nosuid,nodev,noexec,ro" if confine and fstype == "sysfs" else "")
    dev = os.path.join(agent.rootfs, "dev")
    if os.path.isdir(dev) and message.get("guest_devices"):  # the VM's own devices, all of them
        mount("devtmpfs", dev, "devtmpfs", "")
        os.makedirs(os.path.join(dev, "pts"), exist_ok=True)
        mount("devpts", os.path.join(dev, "pts"), "devpts", "newinstance,ptmxmode=0666,mode=620,gid=5")
    elif os.path.isdir(dev):
        populate_dev(dev)
    deferred = []  # mounts that belong to the container's namespaces: made by its process
    for entry in plan:  # the spec's mounts (volumes, tmpfs, mqueue...), in order
        if confine and entry.get("in_rootfs") and entry["fstype"] in NAMESPACED:
            deferred.append(entry)
        elif entry.get("in_rootfs"):
            plan_mount(entry, rootfs_path(agent.rootfs, entry["target"], entry))
    if message.get("hostname"):
        with open("/proc/sys/kernel/hostname", "w") as f:
            f.write(message["hostname"])
    agent.deferred_mounts = deferred  # runv.agent.confine.op_prepare hands them to the container


def disk_by_serial(serial: str, timeout: float = DISK_TIMEOUT) -> str:
    """The /dev node of the virtio-blk disk whose serial is ``serial``."""
    deadline = time.monotonic() + timeout
    while True:
        for name in sorted(os.listdir("/sys/block")):
            try:
                with open(f"/sys/block/{name}/serial") as f:
                    if f.read().strip() == serial:
                        if os.path.exists(f"/dev/{name}"):
                            return f"/dev/{name}"
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise AgentError(f"no disk with serial {serial!r} in the guest")
        time.sleep(0.05)


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
    one as a file when the mount's source is a file, else as a directory."""
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
                raise AgentError(f"cannot mount on {path}: too many symlinks")
            link = os.readlink(candidate)
            parts[:0] = [p for p in link.split("/") if p]
            current = root if link.startswith("/") else current
            continue
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        current = candidate
    if not os.path.lexists(current):
        source_is_file = entry.get("fstype") == "bind" and os.path.isfile(resolve_source(entry["source"]))
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
        mount(source, target, "none", "bind")
        if entry.get("readonly") or options:  # bind flags (ro, nosuid...) need a remount
            flags = ",".join(filter(None, ["remount", "bind", "ro" if entry.get("readonly") else "", options]))
            mount(source, target, "none", flags)
        return
    if entry.get("readonly"):
        options = ",".join(filter(None, [options, "ro"]))
    mount(source, target, entry["fstype"], options)

"""The container's filesystem as its process (``init``) makes it, in runc's order
(libcontainer's rootfs_linux.go prepareRootfs, standard_init_linux.go):

 1. in its own mount namespace, before pivot_root: the rootfs bound on itself (twice: the
    outer bind is moved over the initramfs' ``/``, the inner one is the new root), then every
    entry of the spec's ``mounts`` in spec order, relative to the rootfs, with its type,
    flags, data and propagation (binds from the shares ``prepare`` staged; ``cgroup`` is
    ``cgroup2``: the guest has only v2), after runv's own ``/proc``, ``/sys``, ``/dev``,
    ``/dev/pts``, ``/dev/shm`` for those the spec lacks (the agent must stay invisible);
 2. the standard /dev nodes, ``linux.devices`` and the /dev symlinks (bound from the guest's
    nodes in a user namespace, where mknod is refused, as runc binds the host's);
 3. pivot_root into the inner bind, the old root detached (DESIGN.md 3b: pivot_root from the
    initramfs is EINVAL; from a chroot in a mount with a parent it works);
 4. ``sysctl``, ``readonlyPaths``, ``maskedPaths``, the read-only root, ``rootfsPropagation``.
"""

import ctypes
import errno
import os
import stat

from runv.agent.errors import RequestError
from runv.agent.mounts import (
    DEV_OPTIONS,
    DEVPTS_OPTIONS,
    MS_BIND,
    MS_MOVE,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    SHM_OPTIONS,
    SYSFS,
    check,
    make_dev_nodes,
    make_node,
    mount,
    parse_options,
    raw_mount,
    rootfs_path,
)
from runv.agent.tables import is_bind

DEFAULT_MOUNTS = (  # runv's, where the spec has none at that destination: mounted first
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "nodev", "noexec"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "nodev", "noexec", "ro"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": DEV_OPTIONS.split(",")},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": DEVPTS_OPTIONS.split(",")},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": SHM_OPTIONS.split(",")},
)
# In a user namespace sysfs is refused (EPERM) without a network namespace of its own (the
# container's network is the VM's) and cgroup2 (EBUSY: its superblock belongs to the guest's
# user namespace): a sysfs the agent mounted at prepare (with nothing below it) and the
# container's cgroup are bound instead, as runc binds (its rootless /sys, mountCgroupV2's fallback)
FALLBACK_ERRORS = (errno.EPERM, errno.EBUSY)
DEVICE_KINDS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 1024, 2048, 4096  # statvfs f_flag bits
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)



def mount_plan(spec_mounts: list, binds: list) -> list:
    """The init's mounts in order: runv's defaults the spec lacks, then the spec's, each as
    ``{"where", "destination", "type", "source", "options"}``; a bind takes its source from
    ``binds`` (prepare's staged sources, the first one left with the same destination)."""
    have = {os.path.normpath(m["destination"]) for m in spec_mounts}
    waiting = list(binds)
    plan = [{**m, "where": f"runv's {m['destination']}"} for m in DEFAULT_MOUNTS if m["destination"] not in have]
    for index, entry in enumerate(spec_mounts):
        destination = os.path.normpath(entry["destination"])
        kind, source = entry.get("type") or "", entry.get("source") or entry.get("type") or "none"
        if is_bind(entry):
            match = next((b for b in waiting if os.path.normpath(b["target"]) == destination), None)
            if match is None:
                raise RequestError(f"mounts[{index}]: no staged source for the bind mount at {destination}")
            waiting.remove(match)
            kind, source = "bind", match["source"]
        plan.append({"where": f"mounts[{index}] {destination}", "destination": destination,
                     "type": "cgroup2" if kind == "cgroup" else kind, "source": source,
                     "options": entry.get("options") or []})
    return plan


def locked_flags(path: str) -> int:
    """The flags of the mount at ``path`` that a bind remount must keep (in a user namespace
    the kernel refuses to clear them: runc keeps them the same way)."""
    have = os.statvfs(path).f_flag
    flags = have & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for st, ms in ((ST_NOATIME, MS_NOATIME), (ST_NODIRATIME, MS_NODIRATIME), (ST_RELATIME, MS_RELATIME)):
        if have & st:
            flags |= ms
    return flags


def bind(source: str, target: str, flags: int, recursive: bool, what: str) -> None:
    """A bind of ``source`` on ``target``, then a remount for its flags (ro, nosuid...)."""
    raw_mount(source, target, None, MS_BIND | (MS_REC if recursive else 0), what)
    extra = flags & ~(MS_BIND | MS_REC)
    if extra:
        raw_mount(None, target, None, MS_BIND | MS_REMOUNT | extra | locked_flags(target), what)


def mount_entry(rootfs: str, entry: dict, guest_devices: bool, fallbacks: dict) -> None:
    """One entry of :func:`mount_plan` at its destination inside ``rootfs`` (before pivot_root);
    ``fallbacks``: what a type the kernel refuses here is bound from instead."""
    what = f"{entry['where']} ({entry['type']})"
    target = rootfs_path(rootfs, entry["destination"], {"fstype": entry["type"], "source": entry["source"]})
    flags, data, propagation = parse_options(entry["options"])
    try:
        if entry["type"] == "bind":
            bind(entry["source"], target, flags, "rbind" in entry["options"], what)
        elif guest_devices and entry["destination"] == "/dev":  # io.runv.guest-devices: the VM's own
            raw_mount("devtmpfs", target, "devtmpfs", flags & ~MS_NODEV, what)
        else:
            try:
                raw_mount(entry["source"], target, entry["type"], flags, what, data)
            except OSError as exc:  # in a user namespace: see FALLBACK_ERRORS
                if entry["type"] not in fallbacks or exc.errno not in FALLBACK_ERRORS:
                    raise
                bind(fallbacks[entry["type"]], target, flags, True, what)
        for flag in propagation:
            raw_mount(None, target, None, flag, f"{what}: propagation")
    except OSError as exc:
        raise RequestError(f"{what}: cannot mount on {entry['destination']}: {os.strerror(exc.errno)}") from None


def make_devices(rootfs: str, devices: list, bind: bool) -> None:
    """``linux.devices`` in the rootfs (before pivot_root): mknod'ed, or bound from the guest's in a user namespace."""
    for dev in devices:
        try:
            make_node(rootfs + dev["path"], DEVICE_KINDS[dev["type"]], (dev.get("major", 0), dev.get("minor", 0)),
                      dev.get("fileMode", 0o666), dev["path"] if bind else None, (dev.get("uid", 0), dev.get("gid", 0)))
        except OSError as exc:
            raise RequestError(f"linux.devices: cannot create {dev['path']}: {os.strerror(exc.errno)}") from None


def build(rootfs: str, config: dict, binds: list, userns: bool, guest_devices: bool, cgroup: str | None) -> None:
    """Steps 1-3 (the caller runs in the container's new namespaces, its mounts private);
    ``cgroup``: the container's cgroup directory in the guest."""
    lower = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    try:
        raw_mount(rootfs, rootfs, None, MS_BIND | MS_REC, f"binding {rootfs}")
        outer = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
        raw_mount(rootfs, rootfs, None, MS_BIND | MS_REC, f"binding {rootfs}")
        inner = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(lower)
    for entry in mount_plan(config.get("mounts") or [], binds):
        mount_entry(rootfs, entry, guest_devices, {"sysfs": SYSFS, "cgroup2": cgroup or "/sys/fs/cgroup"})
    dev = os.path.join(rootfs, "dev")
    if not guest_devices:
        make_dev_nodes(dev, bind=userns)
    make_devices(rootfs, config.get("devices") or [], userns)
    # the outer bind (one made in this namespace: a user namespace's copies are locked and cannot move)
    raw_mount(f"/proc/self/fd/{outer}", "/", None, MS_MOVE, f"moving {rootfs} to /")
    os.fchdir(outer)
    os.chroot(".")
    os.fchdir(inner)
    check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")
    os.close(outer)
    os.close(inner)


def finish(config: dict, readonly: bool) -> None:
    """Step 4, after pivot_root."""
    write_sysctls({key: value for key, value in (config.get("sysctl") or {}).items() if not is_vm_wide(key)})
    for path in config.get("readonlyPaths") or []:
        readonly_path(path)
    for path in config.get("maskedPaths") or []:
        mask_path(path)
    if readonly:
        raw_mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | locked_flags("/"), "remounting / read-only")
    propagation = config.get("rootfsPropagation") or "rprivate"
    if propagation != "rprivate":
        _, _, flags = parse_options([propagation])
        raw_mount(None, "/", None, flags[0], f"rootfsPropagation {propagation}")


def is_vm_wide(key: str) -> bool:
    """``net.*``: the VM's network namespace is the container's; the agent writes those at
    ``prepare`` (a container root in a user namespace may not: that namespace is not its)."""
    return key.startswith("net.")


def write_sysctls(sysctls: dict) -> None:
    for key, value in sysctls.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            reason = "the guest kernel has no such sysctl" if exc.errno == errno.ENOENT else exc.strerror
            raise RequestError(f"linux.sysctl: {key}={value}: {reason}") from None


def mask_path(path: str) -> None:
    """runc's maskPath: /dev/null over a file, an empty read-only tmpfs over a directory."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            mount("tmpfs", path, "tmpfs", "ro,size=0k")
        else:
            raw_mount("/dev/null", path, None, MS_BIND, f"masking {path}")
    except (OSError, RequestError) as exc:
        if not os.path.lexists(path) or getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR):
            return
        raise RequestError(f"linux.maskedPaths: {path}: {exc}") from None


def readonly_path(path: str) -> None:
    """runc's readonlyPath: a bind of the path on itself, remounted read-only (keeping its flags)."""
    if not os.path.lexists(path):
        return
    bind(path, path, MS_RDONLY, True, f"linux.readonlyPaths: {path}")

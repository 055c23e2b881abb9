"""The spec's ``mounts`` (volumes) as shares for the VM and entries of the agent's mount plan.

* ``bind`` mounts (type ``bind``, or options holding ``bind``/``rbind``): a directory is shared
  over virtio-9p and mounted at its destination in the container; a file's parent directory is
  shared and mounted under ``/run/runv/volumes/`` in the guest (outside the container's root), and
  the file bind-mounted from there. ``ro`` makes both the share (QEMU refuses writes) and the
  guest mount read-only. Writes to a ``rw`` volume land in the host's file or directory.
* ``tmpfs``, ``proc``, ``sysfs``, ``devpts``, ``mqueue``, ``cgroup``/``cgroup2`` are mounted in
  the guest. ``/proc``, ``/sys``, ``/dev`` and ``/dev/pts`` are already mounted by the agent
  (``/dev`` as devtmpfs, which holds the guest's device nodes), so entries for exactly those are
  skipped.
* Any other type is refused before the VM boots, with one line naming the entry.
"""

from __future__ import annotations

import os
from pathlib import Path

from runv.errors import RunvError
from runv.sandbox.vmspec import GuestMount, Share

NINEP = "trans=virtio,version=9p2000.L,msize=262144"
GUEST_TYPES = ("tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2")
AGENT_MOUNTS = {"/proc": "proc", "/sys": "sysfs", "/dev": "tmpfs", "/dev/pts": "devpts"}
STAGING = "/run/runv/volumes"
FLAGS = {"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync", "noatime",
         "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime", "newinstance"}


def is_bind(entry: dict) -> bool:
    options = entry.get("options") or []
    return entry.get("type") == "bind" or "bind" in options or "rbind" in options


def mount_options(options: list[str]) -> list[str]:
    """The options the guest's mount understands: flags and ``key=value`` (propagation,
    ``bind``, and runtime-specific words such as ``tmpcopyup`` are dropped)."""
    return [o for o in options if o in FLAGS or ("=" in o and not o.startswith(("idmap", "uidmap", "gidmap")))]


def plan(spec_mounts, where: str = "config.json") -> tuple[tuple[Share, ...], tuple[GuestMount, ...]]:
    """Shares and mount-plan entries for the spec's mounts; raises RunvError for the first
    entry runv cannot honour."""
    shares: dict[tuple[str, bool], Share] = {}
    mounts: list[GuestMount] = []

    def share(path: Path, readonly: bool) -> str:
        key = (str(path), readonly)
        if key not in shares:
            shares[key] = Share(tag=f"vol{len(shares)}", path=path, readonly=readonly)
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
            path = Path(source).resolve()
            if path.is_dir():
                tag = share(path, readonly)
                mounts.append(GuestMount(source=tag, fstype="9p", options=",".join([NINEP, *flags]), readonly=readonly,
                                         target=destination, in_rootfs=True))
            elif path.exists():
                tag = share(path.parent, readonly)
                staging = f"{STAGING}/{tag}"
                if not any(m.target == staging for m in mounts):
                    mounts.append(GuestMount(source=tag, fstype="9p", options=NINEP, readonly=readonly, target=staging))
                mounts.append(GuestMount(source=f"{staging}/{path.name}", fstype="bind", options=",".join(flags),
                                         readonly=readonly, target=destination, in_rootfs=True))
            else:
                raise RunvError(f"{name}: bind source {source} does not exist")
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
    return tuple(shares.values()), tuple(mounts)

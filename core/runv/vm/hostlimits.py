"""The container's CPU and pids limits on its host cgroup (``linux.cgroupsPath``), in runc's
files and values, so the shim, the VMM and its helpers together use no more CPU than the
container may, and host tools (``podman stats``, cAdvisor, systemd) read the VM's real use.

The guest applies every limit to the container's own processes too (docs/resources.md);
on the host they bound what runs the VM. One exception: a host ``pids.max`` below what
the VM itself needs (its VMM's threads, the shim's, a file server's) would keep QEMU from
starting threads, so it is raised to that floor there (the guest still counts the
container's processes against the spec's limit).
"""

from __future__ import annotations

from pathlib import Path

from runv.api.errors import RunvError
from runv.api.vmmcgroup import pids_limit, write_file

HELPER_TASKS = 64  # the shim's threads and a file server's (virtiofsd's thread pool), beyond the VMM's own


def pids_floor(vcpus: int) -> int:
    """The fewest tasks a container's host cgroup must allow: its VMM's, its shim's and helpers'."""
    return pids_limit(vcpus) + HELPER_TASKS


def files(resources: dict, vcpus: int, v2: bool) -> dict[str, dict[str, str]]:
    """``{controller: {file: value}}`` for the container's host cgroup, from its
    ``linux.resources`` (checked already): v1's ``cpu.shares``, ``cpu.cfs_period_us`` and
    ``cpu.cfs_quota_us``, ``cpuset.*``, ``pids.max`` as runc writes them; v2's files
    (``cpu.weight``, ``cpu.max``, ...) as the guest gets them (one hierarchy: controller ``""``)."""
    from runv.oci.resources import parse_resources

    cpu = resources.get("cpu") or {}
    guest = parse_resources(resources, "linux.resources")
    found: dict[str, dict[str, str]] = {}
    if v2:
        wanted = ("cpu.weight", "cpu.max", "cpuset.cpus", "cpuset.mems")
        found[""] = {name: guest[name] for name in wanted if name in guest}
    else:
        if cpu.get("shares"):
            found.setdefault("cpu", {})["cpu.shares"] = str(cpu["shares"])
        if cpu.get("period"):
            found.setdefault("cpu", {})["cpu.cfs_period_us"] = str(cpu["period"])
        if cpu.get("quota"):
            found.setdefault("cpu", {})["cpu.cfs_quota_us"] = str(cpu["quota"] if cpu["quota"] > 0 else -1)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if name in guest:
                found.setdefault("cpuset", {})[name] = guest[name]
    if "pids.max" in guest:
        limit = guest["pids.max"]
        if limit != "max":
            limit = str(max(int(limit), pids_floor(vcpus)))
        found.setdefault("" if v2 else "pids", {})["pids.max"] = limit
    return found


def write(directory: Path, values: dict[str, str]) -> None:
    """Writes one hierarchy's files in order; v1's CFS quota and period are retried the
    other way round when the kernel refuses the pair half-changed (as runc does)."""
    try:
        for name, value in values.items():
            write_file(directory / name, value)
    except RunvError:
        pair = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        if not all(name in values for name in pair):
            raise
        for name in pair:
            write_file(directory / name, values[name])


def inherit_cpuset(directory: Path) -> None:
    """A new v1 cpuset cgroup takes its parent's CPUs and memory nodes: it starts empty,
    and the kernel lets no task into an empty cpuset (ENOSPC)."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(directory / name):
            parent = _read(directory.parent / name)
            if parent:
                write_file(directory / name, parent)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise RunvError(f"cannot read {path}: {exc.strerror}") from None

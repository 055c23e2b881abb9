"""Each container's own cgroup v2 inside the guest, ``/sys/fs/cgroup/runv/<container id>``:
made at ``prepare`` with the files the host translated from ``linux.resources``
(runv.oci.resources), joined by every process of the container (stdlib only).

As runc's fs2 CreateCgroupPath, every controller the guest kernel has is enabled down
the tree (the root and ``runv/``), so that several containers of one VM each get their
own limits. A file the guest kernel lacks or a value it refuses fails ``prepare`` with one
line naming the file and the value; the half-made cgroup is removed.
"""

import errno
import os

from runv.agent.errors import RequestError
from runv.agent.mounts import mount

CGROUP_ROOT = "/sys/fs/cgroup"
PARENT = "runv"
# runc leaves these unwritten when the kernel has no swap accounting and the value asks for nothing
SKIPPED_IF_ABSENT = {"memory.swap.max": ("max", "0")}


def _write(path: str, value: str) -> None:
    """One write per line (io.max, rdma.max take a device a write), never creating a file."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # O_TRUNC as runc (a no-op on cgroupfs)
    try:
        for line in value.split("\n"):
            os.write(fd, line.encode())
    finally:
        os.close(fd)


def _enable_controllers(path: str, controllers: list) -> None:
    """All at once, else one by one (one the kernel refuses here fails where it is used)."""
    try:
        _write(f"{path}/cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
    except OSError:
        for controller in controllers:
            try:
                _write(f"{path}/cgroup.subtree_control", f"+{controller}")
            except OSError:
                pass


def _apply(path: str, resources: dict) -> None:
    for name, value in resources.items():
        try:
            _write(f"{path}/{name}", value)
        except OSError as exc:
            if exc.errno == errno.ENOENT and value in SKIPPED_IF_ABSENT.get(name, ()):
                continue
            shown = value.replace("\n", "; ")
            if exc.errno == errno.ENOENT:
                controller = name.split(".")[0]
                reason = f"the guest kernel has no {name} (is the {controller} controller in {CGROUP_ROOT}/cgroup.controllers?)"
            else:
                reason = exc.strerror
            raise RequestError(f"linux.resources: cannot set {name} to {shown}: {reason}") from None


def make_cgroup(resources: dict, container_id: str):
    """The container's cgroup with its limits (its path), or None without cgroup2 and limits."""
    if not os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers"):
        os.makedirs(CGROUP_ROOT, exist_ok=True)
        try:
            mount("cgroup2", CGROUP_ROOT, "cgroup2", "nosuid,nodev,noexec")
        except RequestError:
            if resources:
                raise
            return None
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise RequestError(f"invalid container id {container_id!r} for a cgroup name")
    with open(f"{CGROUP_ROOT}/cgroup.controllers") as f:
        controllers = f.read().split()
    parent = f"{CGROUP_ROOT}/{PARENT}"
    os.makedirs(parent, exist_ok=True)
    _enable_controllers(CGROUP_ROOT, controllers)
    _enable_controllers(parent, controllers)
    path = f"{parent}/{container_id}"
    try:
        os.mkdir(path)
    except FileExistsError:
        raise RequestError(f"the guest already has a cgroup for container {container_id}") from None
    try:
        _apply(path, resources)
    except RequestError:
        os.rmdir(path)
        raise
    return path


def join_cgroup(path) -> None:
    if path:
        with open(f"{path}/cgroup.procs", "w") as f:
            f.write("0")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def update_cgroup(path, resources: dict) -> None:
    """``runv update``: writes the new values over the running container's; on a refusal the
    files already written get their old values back, so the old limits hold (as runc keeps
    its old config when a write fails)."""
    if not path:
        raise RequestError("the container has no cgroup in the guest (the guest kernel has no cgroup2)")
    written = []
    try:
        for name, value in resources.items():
            try:
                old = _read(f"{path}/{name}")
            except OSError:
                old = None
            _apply(path, {name: value})
            if old is not None:
                written.append((name, old))
    except RequestError:
        for name, old in reversed(written):
            try:
                _write(f"{path}/{name}", old)
            except OSError:
                pass
        raise


def op_update(agent, message: dict) -> None:
    """``update`` {``resources``: cgroup v2 file → value, ``vcpus``: how many should be online,
    ``container``: whose (else the VM's own)}: new limits, after the host resized the VM."""
    container = agent.processes.confined.get(agent.processes.resolve(message.get("container")))
    resources = message.get("resources")
    if not isinstance(resources, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in resources.items()):
        raise RequestError("update: resources must map cgroup file names to strings")
    vcpus = message.get("vcpus")
    if vcpus is not None:  # the host hot-plugged vCPUs first: they must be online before a cpuset names them
        from runv.agent.sysfs import require_online

        require_online(vcpus, "update")
    update_cgroup(container.cgroup if container is not None else None, resources)

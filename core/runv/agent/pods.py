"""Several containers in one VM (a pod): each container's processes found, signalled,
frozen and removed on their own, by its guest cgroup in a VM, by the agent's table on the host."""

import ctypes
import os
import signal
import time

from runv.agent.errors import RequestError

CONTAINERS = "/run/runv/containers"  # a pod member's rootfs: CONTAINERS/<id>/rootfs (runv.agent.confine.op_prepare)
SETTLE_TIMEOUT = 5.0  # seconds a freeze or a removal waits for the guest's cgroup to follow
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def cgroup_of(agent, container_id):
    """The container's guest cgroup (a path), or None (no cgroup: the agent on the host)."""
    confined = agent.processes.confined.get(container_id)
    return confined.cgroup if confined is not None else None


def cgroup_pids(path: str) -> list:
    """Every process in the cgroup ``path`` and the cgroups the container made below it."""
    pids = []
    for folder, _dirs, _files in os.walk(path):
        try:
            with open(f"{folder}/cgroup.procs") as f:
                pids += [int(line) for line in f if line.strip()]
        except OSError:
            continue
    return pids


def container_pids(agent, container_id) -> list:
    path = cgroup_of(agent, container_id)
    if path:
        return cgroup_pids(path)
    return [p.pid for p in agent.processes.of_container(container_id)]


def signal_container(agent, container_id, signum: int) -> None:
    """``signum`` to every process of the container (``cgroup.kill`` for SIGKILL, which
    also reaches a process forking as it is killed)."""
    path = cgroup_of(agent, container_id)
    if path and signum == signal.SIGKILL and os.path.exists(f"{path}/cgroup.kill"):
        with open(f"{path}/cgroup.kill", "w") as f:
            f.write("1")
        return
    if path:
        for pid in cgroup_pids(path):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return
    for proc in agent.processes.of_container(container_id):  # on the host: each process leads its own session
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise RequestError(f"{what}: still not done after {SETTLE_TIMEOUT:.0f} s")
        time.sleep(0.02)


def op_freeze(agent, message: dict) -> None:
    """``freeze`` {container, frozen}: the container's cgroup frozen (or thawed), waited for."""
    cid = agent.processes.resolve(message.get("container"))
    frozen = bool(message.get("frozen"))
    path = cgroup_of(agent, cid)
    if path is None:
        signal_container(agent, cid, signal.SIGSTOP if frozen else signal.SIGCONT)
        return
    with open(f"{path}/cgroup.freeze", "w") as f:
        f.write("1" if frozen else "0")

    def settled() -> bool:
        with open(f"{path}/cgroup.events") as f:
            return f"frozen {int(frozen)}" in f.read().split("\n")

    wait_for(settled, f"{'freezing' if frozen else 'thawing'} container {cid}")


def op_remove(agent, message: dict) -> None:
    """``remove`` {container}: a pod member's processes killed and reaped, its mounts
    undone, its cgroup removed, the container forgotten; nothing when it is not there."""
    table = agent.processes
    cid = message.get("container")
    if cid == table.primary:
        raise RequestError(f"container {cid} is the VM's own: it is removed with the VM")
    if cid not in table.roots:
        return
    signal_container(agent, cid, signal.SIGKILL)
    path = cgroup_of(agent, cid)

    def gone() -> bool:
        table.reap()
        return not table.of_container(cid) and not (path and cgroup_pids(path))

    wait_for(gone, f"removing container {cid}")
    from runv.agent.mounts import BINDS, staged

    unmount_below([staged(agent, f"{CONTAINERS}/{cid}"), staged(agent, f"{BINDS}/{cid}")])
    if path:
        for folder, _dirs, _files in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
            os.rmdir(folder)
    del table.roots[cid]
    table.confined.pop(cid, None)


def unmount_below(prefixes: list) -> None:
    """Detaches every mount at or under one of ``prefixes`` (paths without spaces or other
    characters mountinfo escapes: runv's own, named by container ids), deepest first."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    inside = [p for p in points if any(p == prefix or p.startswith(prefix + "/") for prefix in prefixes)]
    for point in sorted(set(inside), key=len, reverse=True):
        _libc.umount2(point.encode(), MNT_DETACH)

"""The container's cgroup v2 inside the guest: made at ``prepare`` with its limits, joined
by the container's processes (stdlib only)."""

import os

from runv.agent.errors import AgentError
from runv.agent.mounts import mount

CGROUP_ROOT = "/sys/fs/cgroup"


def make_cgroup(resources: dict):
    """A cgroup v2 of the container's own under the guest's, with its limits; None without cgroup2."""
    if not os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers"):
        os.makedirs(CGROUP_ROOT, exist_ok=True)
        try:
            mount("cgroup2", CGROUP_ROOT, "cgroup2", "nosuid,nodev,noexec")
        except AgentError:
            if resources:
                raise
            return None
    try:
        with open(f"{CGROUP_ROOT}/cgroup.subtree_control", "w") as f:
            f.write("+memory +pids")
    except OSError:
        pass
    path = f"{CGROUP_ROOT}/container"
    os.makedirs(path, exist_ok=True)
    for name, value in resources.items():
        try:
            with open(f"{path}/{name}", "w") as f:
                f.write(value)
        except OSError as exc:
            raise AgentError(f"linux.resources: cannot set {name} to {value}: {exc.strerror}") from None
    return path


def join_cgroup(path) -> None:
    if path:
        with open(f"{path}/cgroup.procs", "w") as f:
            f.write("0")

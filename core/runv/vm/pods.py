"""Which running container's VM a new container joins: its *sandbox* (a pod's first, infra
or pause container), named by CRI annotations (containerd's, CRI-O's) or found from the
network namespace the new container asks to join (Podman pods, Docker's
``--network container:X``). See docs/integration.md ("Pods")."""

from __future__ import annotations

import os

from runv.api.container import netns_path
from runv.api.errors import RunvError
from runv.records import NoSuchContainer, Store

# (annotation naming the container's kind, annotation naming its sandbox's id): a kind of
# "container" joins the sandbox's VM; "sandbox" (the pause container) boots one
CRI_ANNOTATIONS = (
    ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id"),  # containerd
    ("io.kubernetes.cri-o.ContainerType", "io.kubernetes.cri-o.SandboxID"),  # CRI-O
)


def identity(path: str) -> list[int] | None:
    """The (device, inode) of the namespace file at ``path``, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def host_netns() -> list[int] | None:
    return identity("/proc/1/ns/net")


def find(store: Store, container_id: str, annotations: dict, linux: dict) -> str | None:
    """The id of the container whose VM ``container_id`` joins, or None when it boots its
    own; a RunvError (one line) when the sandbox it names cannot take it."""
    for kind_key, id_key in CRI_ANNOTATIONS:
        if annotations.get(kind_key) == "container":
            sandbox = annotations.get(id_key)
            if not sandbox:
                raise RunvError(f"container {container_id}: annotation {kind_key}=container names no sandbox ({id_key})")
            return usable(store, container_id, sandbox, f"its annotation {id_key}")
    path = netns_path(linux)
    wanted = identity(path) if path else None
    if wanted is None or wanted == host_netns():
        return None
    for other in store.ids():
        try:
            record = store.read(other)
        except RunvError:
            continue
        if record.sandbox or record.live_status() in ("stopped", "creating"):
            continue
        if record.netns == wanted or path == f"/proc/{record.shim_pid}/ns/net":
            return usable(store, container_id, other, f"its network namespace {path}")
    return None


def usable(store: Store, container_id: str, sandbox: str, why: str) -> str:
    """``sandbox``, checked to run a VM another container can join now."""
    try:
        record = store.read(sandbox)
    except NoSuchContainer:
        raise RunvError(f"container {container_id} belongs in the VM of container {sandbox} ({why}), which does not "
                        f"exist under {store.root}: create that container with runv first") from None
    if record.sandbox:
        raise RunvError(f"container {container_id} belongs in the VM of container {sandbox} ({why}), which itself runs in "
                        f"the VM of {record.sandbox}: name the pod's first container")
    status = record.live_status()
    if status == "paused":
        raise RunvError(f"container {container_id} cannot join the VM of container {sandbox} ({why}): it is paused; "
                        f"resume it first")
    if status not in ("created", "running"):
        raise RunvError(f"container {container_id} cannot join the VM of container {sandbox} ({why}): it is {status}")
    return sandbox


def members(store: Store, sandbox: str) -> list[str]:
    """The live containers that run in the VM of ``sandbox``."""
    found = []
    for other in store.ids():
        try:
            record = store.read(other)
        except RunvError:
            continue
        if record.sandbox == sandbox and record.live_status() != "stopped":
            found.append(other)
    return found

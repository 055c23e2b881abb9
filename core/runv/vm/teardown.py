"""Taking a container's VM down: the one teardown the shim runs when its container exits
(or its create fails) and ``delete`` runs again on whatever a crash left behind.

Besides what the record names, it empties the VM's own cgroup (found from the state
directory alone, :mod:`runv.api.vmmcgroup`): whatever is left in it dies, whatever the
record says; and it removes what it made of the container's cgroupsPath once the shim has
left it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from runv.log import logger
from runv.vm import volumes

if TYPE_CHECKING:
    from pathlib import Path

    from runv.api.container import Container
    from runv.api.hypervisor import VM
    from runv.api.vm import StorageAttachment
    from runv.hooks import Hooks


def teardown(container: Container, hooks: Hooks, vm: VM | None, attachment: StorageAttachment | None,
             force: bool = False, leave: Callable[[], None] | None = None) -> None:
    """Stops the VM (or, for a pod member, ``leave()``s the VM of the sandbox it runs in),
    kills what is left in its cgroup and removes it, releases the network, unmounts the pod
    directory's copies and the volumes' host staging (before the storage they may hold), and
    detaches the storage, in that order. Every step runs even
    when an earlier one failed (a VMM that cannot be stopped must not keep a tap or a mount
    alive); the first failure is raised once all have run. Each step converges when there
    is nothing left to undo."""
    steps = [
        ("stop the VM", (lambda: vm.stop(force=force)) if vm is not None else None),
        ("leave the pod's VM", leave),
        ("empty the VM's cgroup", lambda: empty_cgroup(container.state_dir)),
        ("release the network", lambda: hooks.release_net(container=container)),
        ("unmount the pod directory and the volumes", lambda: volumes.release(container.state_dir)),
        ("detach the storage", (lambda: hooks.detach_storage(container=container, attachment=attachment))
         if attachment is not None else None),
    ]
    first = None
    for what, step in steps:
        if step is None:
            continue
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the remaining steps must still run
            logger.error("container %s: cannot %s: %s", container.id, what, exc)
            first = first or exc
    if first is not None:
        raise first


def empty_cgroup(state_dir: Path) -> None:
    """Kills every process in the VM's cgroup and removes it, then the shim's and what runv
    made of the cgroupsPath (:func:`runv.api.vmmcgrouppath.release`); converges when there is none."""
    from runv.vm import cgroupspath

    cgroupspath.release(state_dir)

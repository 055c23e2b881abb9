"""Hook specifications: what a runv plugin may implement.

A plugin is a module (or object) with functions named like the specifications below,
decorated with :data:`runv.hookimpl`. Hypervisor plugins implement ``probe``, ``boot``,
``stop_vm``, ``pause_vm`` and ``resume_vm``; storage plugins implement ``attach_storage``
and ``detach_storage``; any plugin may contribute to ``prepare_vm``. The core calls hooks
with keyword arguments only, through :class:`runv.plugins.Hooks`.

Only the selected hypervisor and the selected storage plugin are loaded for a container,
so a ``firstresult`` hook answered by "the hypervisor" is answered by the one in use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from runv.agent.host import AgentClient
    from runv.oci.config import Process
    from runv.sandbox.context import Container
    from runv.sandbox.vmspec import Nic, StorageAttachment, VMContribution, VMHandle, VMSpec

hookspec = pluggy.HookspecMarker("runv")

# -------------------------------------------------------------------------
# Host checks
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def probe() -> str | None:
    """Can this plugin run on this host?

    Hypervisor plugins answer for themselves; ``runv`` calls it on each candidate when
    ``--hypervisor auto`` picks one. Keep it fast (seconds at most, never hang).

    :return: ``None`` when usable, otherwise one line saying why not and how to fix it.

    Stops at first non-None result.
    """


# -------------------------------------------------------------------------
# Building the VM (in the shim, before boot)
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def attach_storage(container: Container) -> StorageAttachment | None:
    """Make the container's root filesystem reachable from the guest.

    Implemented by the selected storage plugin.

    :param container: the container being created (bundle, spec, state directory).
    :return: the shares/disks to add to the VM and how the agent mounts the rootfs.

    Stops at first non-None result.
    """


@hookspec
def configure_net(container: Container) -> VMContribution | None:
    """Wire the container's network into the VM (devices and kernel arguments).

    Called on every plugin; each may contribute. Runs in the shim's main thread before
    the VMM starts (a plugin may move the shim into a network namespace of its own here).
    NICs come back as :class:`runv.sandbox.vmspec.Nic` with open fds the VMM inherits.

    :param container: the container being created.
    :return: what to add to the VM, or ``None``.
    """


@hookspec
def prepare_vm(container: Container, vm: VMSpec) -> VMContribution | None:
    """Contribute to the VM about to boot, or refuse it.

    Called on every plugin after storage and network are attached. Raise
    :class:`runv.errors.RunvError` to refuse (for example: a required binary is missing).

    :param container: the container being created.
    :param vm: the VM as built so far.
    :return: extra kernel arguments, shares or disks, or ``None``.
    """


@hookspec(firstresult=True)
def boot(vm: VMSpec) -> VMHandle | None:
    """Start the VM described by ``vm`` and return once its VMM is running.

    Implemented by the selected hypervisor. The VMM must serve the agent channel at
    ``vm.agent_socket`` and write its own errors to ``vm.console_log``. Raise
    :class:`runv.errors.RunvError` with the VMM's own words when it fails to start.

    :return: a handle the core persists and passes back to the hooks below.

    Stops at first non-None result.
    """


# -------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def exec(container: Container, process: Process, agent: AgentClient, name: str, streams: dict) -> int | None:
    """Start ``process`` in the guest and return its guest PID.

    The core's default implementation asks the guest agent; a plugin whose guest starts
    processes another way implements it and returns a PID.

    :param name: the process's name in the agent (``init`` for the container process).
    :param streams: the agent channel numbers for ``stdin``, ``stdout`` and ``stderr``.

    Stops at first non-None result.
    """


@hookspec
def sync_net(container: Container, agent: AgentClient, attach: Callable[[Nic], None]) -> None:
    """Bring the guest's network up to date with the container's network namespace.

    Called on every plugin once the agent answers (after ``boot``: the NICs given by
    ``configure_net``) and again at ``start`` (interfaces a caller configured in the
    namespace after ``create``, the Docker model). New NICs are hot-plugged with
    ``attach``, which raises :class:`runv.errors.RunvError` when the hypervisor cannot.

    :param agent: the guest agent, for its ``network`` request.
    :param attach: adds one NIC to the running VM (through ``attach_nic``).
    """


@hookspec(firstresult=True)
def attach_nic(handle: VMHandle, nic: Nic) -> bool | None:
    """Hot-plug ``nic`` into the running VM. Implemented by the hypervisor.

    :return: True when done; ``None`` when this hypervisor cannot hot-plug NICs.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def pause_vm(handle: VMHandle) -> bool | None:
    """Freeze every vCPU of the VM. Implemented by the hypervisor; returns True when done.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def resume_vm(handle: VMHandle) -> bool | None:
    """Thaw a VM frozen by ``pause_vm``. Implemented by the hypervisor; returns True.

    Stops at first non-None result.
    """


# -------------------------------------------------------------------------
# Teardown (must converge: called again after a crash, on whatever is left)
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def stop_vm(handle: VMHandle, force: bool) -> bool | None:
    """Stop the VM and wait until its VMM has exited.

    Implemented by the hypervisor. Must succeed when the VMM is already gone.

    :param force: kill at once instead of asking the VMM to quit.
    :return: True when done.

    Stops at first non-None result.
    """


@hookspec
def detach_storage(container: Container, attachment: StorageAttachment) -> None:
    """Undo ``attach_storage`` once the VM is stopped. Must succeed when already undone."""


@hookspec
def release_net(container: Container) -> None:
    """Undo ``configure_net`` and ``sync_net`` once the VM is stopped (taps, tc qdiscs).

    Called on every plugin, in the shim and again by ``delete`` (also after a crash, with
    ``container.spec`` possibly ``None``). Must succeed when already undone.
    """


# -------------------------------------------------------------------------
# VM templates (a booted guest saved once, restored for each container)
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def template_shape(vm: VMSpec) -> dict | None:
    """What a template must have been made from to start ``vm``: the hypervisor's machine
    and device set with every per-container value (host paths, names) taken out, and the
    VMM's own identity. Implemented by the hypervisor; the core compares it with the one
    recorded in each template, so a template of another shape or a stale one is not used.

    :return: JSON-ready data, or ``None`` when ``vm`` cannot start from a template here
        (this hypervisor has no templates, or the VM has devices a template cannot carry);
        the core then boots cold.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def save_template(vm: VMSpec, directory: Path, compress: bool, ready: Callable[[VMHandle], None]) -> dict | None:
    """Boot ``vm``, call ``ready(handle)`` (it returns once the guest agent answers, and
    stays connected), save the running guest into ``directory`` and stop the VM.

    Implemented by the hypervisor. Files written must be readable by root only.

    :param compress: make the saved files smaller at some cost in restore time and memory.
    :return: what was saved (kept in the template's record and passed to
        ``restore_template``), or ``None`` when this hypervisor has no templates.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def restore_template(vm: VMSpec, directory: Path, record: dict) -> VMHandle | None:
    """Start ``vm`` from the template in ``directory`` instead of booting it; return once
    the guest runs. ``vm`` has the template's shape (see ``template_shape``) with this
    container's own host paths. The guest agent does not say ``ready`` again: the core
    pokes it and pushes the clone's identity (RNG seed, clock, hostname).

    Raise :class:`runv.errors.RunvError` when the template cannot be loaded (the core
    warns and boots cold); return ``None`` when this hypervisor has no templates.

    Stops at first non-None result.
    """

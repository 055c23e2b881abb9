"""Hook specifications: what a runv plugin may implement, by phase of a container's life.

A plugin is a module (or object) with functions named like the specifications below,
decorated with :data:`runv.api.hookimpl`, and declared by an entry point (see
docs/plugins.md). A function decorated with ``hookimpl`` whose name is not below fails the
plugin's load (a misspelt hook never registers silently).

- A **hypervisor** plugin implements ``hypervisor_info``, ``probe`` and ``boot``; the
  :class:`~runv.api.VM` that ``boot`` returns does the rest (stop, pause, hot-plug, save).
- A **storage** plugin implements ``attach_storage`` and ``detach_storage`` (and ``probe``).
- Any plugin may contribute to ``configure_net``, ``prepare_vm``, ``sync_net``,
  ``release_net`` and ``exec``; the always-on extras (``runv.extras`` entry points) do.
- Any plugin may name the kernel modules its guest side needs (``guest_modules``):
  ``runv guest build`` asks every installed plugin, and the image carries them all.

Only the selected hypervisor and storage plugin are loaded for a container, so a
``firstresult`` hook is answered by the one in use. The core calls every hook with keyword
arguments, through :class:`runv.hooks.Hooks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from runv.api import VM, Agent, Container, GuestModules, HypervisorInfo, Nic, Process, StorageAttachment, VMContribution, VMSpec

hookspec = pluggy.HookspecMarker("runv")

# -------------------------------------------------------------------------
# What a plugin is, and whether it can run here
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def hypervisor_info() -> HypervisorInfo | None:
    """Declare the hypervisor: its capabilities (shared filesystem, agent channel, disk
    naming, NICs, pause), the :class:`~runv.api.VM` class its VMs are, its template
    support and its ``priority`` for ``--hypervisor auto``.

    Implemented by every hypervisor plugin; the core checks the declaration is whole
    (:meth:`~runv.api.HypervisorInfo.problems`) when the plugin loads.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def probe() -> str | None:
    """Can this plugin run on this host?

    Called on the plugin alone (``runv check``, and each candidate of ``--hypervisor auto``).
    Keep it fast (seconds at most, never hang).

    :return: ``None`` when usable, otherwise one line saying why not and how to fix it.

    Stops at first non-None result.
    """


@hookspec
def guest_modules() -> GuestModules | None:
    """Name the kernel modules the guest must have for this plugin's devices, channels,
    filesystems or device-mapper targets.

    Called on every installed, enabled plugin by ``runv guest build``, whose initrd then
    carries all of them with their dependencies (and is rebuilt when the list changes).

    :return: the modules to load at boot and those to ship for the kernel to load on demand.
    """


# -------------------------------------------------------------------------
# Building the VM (in the shim, before boot)
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def attach_storage(container: Container) -> StorageAttachment | None:
    """Make the container's root filesystem reachable from the guest.

    Implemented by the selected storage plugin. Name shares and disks in the mount plan
    with :meth:`runv.api.GuestMount.of_share` and :meth:`~runv.api.GuestMount.of_disk`:
    the core turns them into what the hypervisor serves.

    :param container: the container being created (bundle, spec, state directory).
    :return: the shares/disks to add to the VM and how the agent mounts the rootfs.

    Stops at first non-None result.
    """


@hookspec
def configure_net(container: Container) -> VMContribution | None:
    """Wire the container's network into the VM (NICs and kernel arguments).

    Called on every plugin; each may contribute. Runs in the shim's main thread before
    the VMM starts (a plugin may move the shim into a network namespace of its own here).
    NICs come back as :class:`runv.api.Nic` with open fds the VMM inherits.

    :param container: the container being created.
    :return: what to add to the VM, or ``None``.
    """


@hookspec
def prepare_vm(container: Container, vm: VMSpec) -> VMContribution | None:
    """Contribute to the VM about to boot, or refuse it.

    Called on every plugin after storage and network are attached. Raise
    :class:`runv.api.RunvError` to refuse (for example: a required binary is missing).

    :param container: the container being created.
    :param vm: the VM as built so far.
    :return: extra kernel arguments, shares or disks, or ``None``.
    """


@hookspec(firstresult=True)
def boot(vm: VMSpec) -> VM | None:
    """Start the VM described by ``vm`` and return once its VMM is running.

    Implemented by the selected hypervisor. The VMM must serve the agent channel (as its
    :class:`~runv.api.AgentChannel` says) at the unix socket ``vm.agent_socket`` and write
    its own errors to ``vm.console_log``. Every share, disk and NIC of ``vm`` is within
    the declared capabilities (the core checked); refuse anything else with
    :class:`runv.api.RunvError` rather than drop it, and fail with the VMM's own words.

    :return: the running VM.

    Stops at first non-None result.
    """


# -------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def exec(container: Container, process: Process, agent: Agent, name: str, streams: dict) -> int | None:
    """Start ``process`` in the guest and return its guest PID.

    The core's default implementation asks the guest agent; a plugin whose guest starts
    processes another way implements it and returns a PID.

    :param name: the process's name in the agent (``init`` for the container process).
    :param streams: the agent channel numbers for ``stdin``, ``stdout`` and ``stderr``.

    Stops at first non-None result.
    """


@hookspec
def sync_net(container: Container, agent: Agent, attach: Callable[[Nic], None]) -> None:
    """Bring the guest's network up to date with the container's network namespace.

    Called on every plugin once the agent answers (after ``boot``: the NICs given by
    ``configure_net``) and again at ``start`` (interfaces a caller configured in the
    namespace after ``create``, the Docker model). New NICs are hot-plugged with
    ``attach``, which raises :class:`runv.api.RunvError` when the hypervisor cannot.

    :param agent: the guest agent, for its ``network`` request.
    :param attach: adds one NIC to the running VM (:meth:`runv.api.VM.attach_nic`).
    """


# -------------------------------------------------------------------------
# Teardown (must converge: called again after a crash, on whatever is left)
# -------------------------------------------------------------------------


@hookspec
def detach_storage(container: Container, attachment: StorageAttachment) -> None:
    """Undo ``attach_storage`` once the VM is stopped. Must succeed when already undone."""


@hookspec
def release_net(container: Container) -> None:
    """Undo ``configure_net`` and ``sync_net`` once the VM is stopped (taps, tc qdiscs).

    Called on every plugin, in the shim and again by ``delete`` (also after a crash, with
    ``container.spec`` possibly ``None``). Must succeed when already undone.
    """

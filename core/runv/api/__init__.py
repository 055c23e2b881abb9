"""The plugin contract, all of it: ``from runv.api import hookimpl, VMSpec, VM``.

Every type a hook passes or returns is here, and what plugins need to write one; this
package imports nothing else of runv (a test checks it), so a plugin written against it
keeps working while the core's insides move, and type-checks against it alone (mypy runs
on the example plugins in the suite). Names load on first use: ``runv state`` imports
``runv.api.errors`` without paying for the rest.

- :data:`hookimpl`: the marker for hook implementations (the hooks: :mod:`runv.hookspecs`).
- What a VM is made of (:mod:`runv.api.vm`): :class:`VMSpec`, :class:`Share`, :class:`Disk`,
  :class:`Nic`, :class:`GuestMount`, :class:`StorageAttachment`, :class:`VMContribution`,
  :class:`GuestModules`, :class:`Userland`.
- The hypervisor interface (:mod:`runv.api.hypervisor`): :class:`HypervisorInfo`,
  :class:`Capabilities`, :class:`SharedFs` (:data:`NINEP_VIRTIO`, :data:`VIRTIOFS`),
  :class:`AgentChannel` and :class:`ChannelKind`, :class:`VM`, :class:`TemplateSupport`.
- The container as the hooks see it: :class:`Container` (:func:`netns_path`), its OCI
  :class:`Spec` and :class:`Process` (:mod:`runv.api.spec`), the guest :class:`Agent`.
- Errors: :class:`RunvError`, :class:`Unsupported`, :class:`AgentError`.
- Values: :class:`Frozen`, :func:`field`, :func:`to_json` (how every value above is made).
- Helpers VMM plugins need: :func:`process_start_time`, :func:`is_running`,
  :func:`wait_gone`, :func:`stop_process` (ask, wait, kill), :func:`kill_until_gone`;
  :func:`socket_name` and :func:`connect_unix` (unix sockets at any path length);
  :func:`run_tool` (a host tool with a one-line error), :func:`last_words` (a console
  log's tail as one line), :func:`await_start` (wait for a VMM just started, or fail with
  its last words); :func:`kvm_verdict` (can KVM boot a guest here?).
- Modules: :mod:`~runv.api.jail` (the jail a VMM starts in), :mod:`~runv.api.vmmcgroup`
  (the VMM's own cgroup), :mod:`~runv.api.images` (ext4 bases, qcow2 overlays) and
  :mod:`~runv.api.storage` (``[storage]`` settings, a container's own directory) for
  storage plugins, :mod:`~runv.api.config` (a plugin's table in runv's config file).
"""

from importlib import import_module

TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers and IDEs read; at run time __getattr__ below loads the same names
    import pluggy

    from runv.api import config, images, jail, storage, vmmcgroup
    from runv.api.agent import Agent
    from runv.api.container import Container, netns_path
    from runv.api.errors import AgentError, RunvError, Unsupported
    from runv.api.frozen import Frozen, field, to_json
    from runv.api.hypervisor import (
        NINEP_VIRTIO,
        VIRTIOFS,
        VM,
        AgentChannel,
        Capabilities,
        ChannelKind,
        HypervisorInfo,
        SharedFs,
        TemplateSupport,
    )
    from runv.api.kvm import cached_verdict as kvm_verdict
    from runv.api.process import is_running, kill_until_gone, process_start_time, stop_process, wait_gone
    from runv.api.sockets import connect_unix, socket_name
    from runv.api.spec import ConsoleSize, Hook, Process, Root, Spec, User
    from runv.api.tools import await_start, last_words, run_tool
    from runv.api.vm import Disk, GuestModules, GuestMount, Nic, Share, StorageAttachment, Userland, VMContribution, VMSpec

    hookimpl: pluggy.HookimplMarker

_WHERE = {
    "Agent": "agent",
    "Container": "container", "netns_path": "container",
    "AgentError": "errors", "RunvError": "errors", "Unsupported": "errors",
    "Frozen": "frozen", "field": "frozen", "to_json": "frozen",
    "NINEP_VIRTIO": "hypervisor", "VIRTIOFS": "hypervisor", "VM": "hypervisor", "AgentChannel": "hypervisor",
    "Capabilities": "hypervisor", "ChannelKind": "hypervisor", "HypervisorInfo": "hypervisor", "SharedFs": "hypervisor",
    "TemplateSupport": "hypervisor",
    "kvm_verdict": "kvm",
    "is_running": "process", "kill_until_gone": "process", "process_start_time": "process", "stop_process": "process",
    "wait_gone": "process",
    "connect_unix": "sockets", "socket_name": "sockets",
    "ConsoleSize": "spec", "Hook": "spec", "Process": "spec", "Root": "spec", "Spec": "spec", "User": "spec",
    "await_start": "tools", "last_words": "tools", "run_tool": "tools",
    "Disk": "vm", "GuestModules": "vm", "GuestMount": "vm", "Nic": "vm", "Share": "vm", "StorageAttachment": "vm",
    "Userland": "vm", "VMContribution": "vm", "VMSpec": "vm",
}
_RENAMED = {"kvm_verdict": "cached_verdict"}
_MODULES = ("config", "images", "jail", "storage", "vmmcgroup")
__all__ = ["hookimpl", *_WHERE, *_MODULES]


def __getattr__(name: str):
    if name == "hookimpl":
        import pluggy

        value = pluggy.HookimplMarker("runv")
    elif name in _MODULES:
        value = import_module(f"runv.api.{name}")
    elif name in _WHERE:
        value = getattr(import_module(f"runv.api.{_WHERE[name]}"), _RENAMED.get(name, name))
    else:
        raise AttributeError(f"module 'runv.api' has no attribute {name!r}")
    globals()[name] = value
    return value

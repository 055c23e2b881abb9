"""Everything a runv plugin imports, in one place: ``from runv.api import hookimpl, VMSpec, VM``.

This package imports nothing else of runv (a test checks it), so a plugin written against
it keeps working while the core's insides move. Names load on first use: importing
``runv.api`` costs nothing until a plugin needs a name.

- :data:`hookimpl` — the marker for hook implementations (the hooks: :mod:`runv.hookspecs`).
- The VM model (:mod:`runv.api.vm`): :class:`VMSpec`, :class:`Share`, :class:`Disk`,
  :class:`Nic`, :class:`GuestMount`, :class:`StorageAttachment`, :class:`VMContribution`.
- The hypervisor interface (:mod:`runv.api.hypervisor`): :class:`HypervisorInfo`,
  :class:`Capabilities`, :class:`SharedFs`, :class:`AgentChannel`, :class:`VM`,
  :class:`TemplateSupport`.
- :class:`Container` and :func:`netns_path` (:mod:`runv.api.container`), :class:`RunvError` and :class:`Unsupported`.
- Helpers drivers need: :func:`process_start_time`, :func:`is_running`, :func:`wait_gone`,
  :func:`stop_process` (ask, wait, kill), :func:`socket_name` and :func:`connect_unix`
  (unix sockets at any path length), :func:`run_tool` (a host tool with a one-line error),
  :func:`last_words` (a console log's tail as one line), :func:`kvm_verdict` (can KVM boot
  a guest here?).
- Modules for VMM plugins: :mod:`runv.api.jail` (the jail a VMM starts in: ``jail.command``,
  ``jail.vm_binds``, ``jail.Bind``) and :mod:`runv.api.cgroups` (the VMM's own cgroup).
"""

from importlib import import_module

_WHERE = {
    "VMSpec": "vm", "Share": "vm", "Disk": "vm", "Nic": "vm", "GuestMount": "vm", "StorageAttachment": "vm",
    "VMContribution": "vm",
    "HypervisorInfo": "hypervisor", "Capabilities": "hypervisor", "SharedFs": "hypervisor", "AgentChannel": "hypervisor",
    "VM": "hypervisor", "TemplateSupport": "hypervisor", "NINEP_VIRTIO": "hypervisor", "VIRTIOFS": "hypervisor",
    "Container": "container", "netns_path": "container",
    "RunvError": "errors", "Unsupported": "errors",
    "process_start_time": "process", "is_running": "process", "wait_gone": "process", "stop_process": "process", "kill_until_gone": "process",
    "socket_name": "sockets", "connect_unix": "sockets",
    "run_tool": "tools", "last_words": "tools",
    "kvm_verdict": "kvm",
    "Frozen": "frozen", "field": "frozen", "to_json": "frozen",
}
_MODULES = ("jail", "cgroups")
__all__ = ["hookimpl", *_WHERE, *_MODULES]


def __getattr__(name: str):
    if name == "hookimpl":
        import pluggy

        value = pluggy.HookimplMarker("runv")
    elif name in _MODULES:
        value = import_module(f"runv.api.{name}")
    elif name in _WHERE:
        module = import_module(f"runv.api.{_WHERE[name]}")
        value = getattr(module, "cached_verdict" if name == "kvm_verdict" else name)
    else:
        raise AttributeError(f"module 'runv.api' has no attribute {name!r}")
    globals()[name] = value
    return value

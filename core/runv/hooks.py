"""A typed façade over pluggy's hook relay: one keyword-only method per hook specification
(see :mod:`runv.hookspecs` for what each means), so the core's calls are checked by a type
checker and read like plain calls. ``firstresult`` hooks return one answer, the others a
list with one entry per plugin that answered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from runv.api import VM, Agent, Container, GuestModules, HypervisorInfo, Nic, Process, StorageAttachment, VMContribution, VMSpec


class Hooks:
    """The hooks of the plugins given (name, module or object), plus the core's defaults.

    Registration fails with pluggy's ``PluginValidationError`` when a plugin has a
    ``hookimpl`` that matches no specification (a misspelt hook) or the wrong arguments.
    """

    def __init__(self, *plugins: tuple[str, Any]) -> None:
        import pluggy

        from runv import builtin, hookspecs

        self.pm = pluggy.PluginManager("runv")
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(builtin, "runv.builtin")
        for name, plugin in plugins:
            self.pm.register(plugin, name)
        self.pm.check_pending()
        self.hook = self.pm.hook

    def implemented(self, plugin_name: str) -> list[str]:
        """The hooks the plugin registered as ``plugin_name`` implements, by name."""
        callers = self.pm.get_hookcallers(self.pm.get_plugin(plugin_name)) or []
        return sorted(caller.name for caller in callers)

    def hypervisor_info(self) -> HypervisorInfo | None:
        return self.hook.hypervisor_info()

    def probe(self) -> str | None:
        return self.hook.probe()

    def guest_modules(self) -> list[GuestModules]:
        return self.hook.guest_modules()

    def attach_storage(self, *, container: Container) -> StorageAttachment | None:
        return self.hook.attach_storage(container=container)

    def configure_net(self, *, container: Container) -> list[VMContribution]:
        return self.hook.configure_net(container=container)

    def prepare_vm(self, *, container: Container, vm: VMSpec) -> list[VMContribution]:
        return self.hook.prepare_vm(container=container, vm=vm)

    def boot(self, *, vm: VMSpec) -> VM | None:
        return self.hook.boot(vm=vm)

    def exec(self, *, container: Container, process: Process, agent: Agent, name: str, streams: dict) -> int:
        return self.hook.exec(container=container, process=process, agent=agent, name=name, streams=streams)

    def sync_net(self, *, container: Container, agent: Agent, attach: Callable[[Nic], None]) -> None:
        self.hook.sync_net(container=container, agent=agent, attach=attach)

    def detach_storage(self, *, container: Container, attachment: StorageAttachment) -> None:
        self.hook.detach_storage(container=container, attachment=attachment)

    def release_net(self, *, container: Container) -> None:
        self.hook.release_net(container=container)

"""Finding, selecting and loading plugins.

Plugins declare themselves with entry points, one group per kind, so listing them needs
no import. Only the selected hypervisor and storage plugin (plus the always-on extras)
are imported; an import that fails becomes a recorded :class:`LoadError`, never a crash
of an unrelated command.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import attrs

from runv.errors import RunvError

if TYPE_CHECKING:
    from runv.agent.host import AgentClient
    from runv.oci.config import Process
    from runv.sandbox.context import Container
    from runv.sandbox.vmspec import Nic, StorageAttachment, VMContribution, VMHandle, VMSpec

GROUPS = {"hypervisor": "runv.hypervisors", "storage": "runv.storage", "extra": "runv.plugins"}
AUTO = "auto"
DEFAULT_STORAGE = "overlay"
DISABLE_ENV = "RUNV_DISABLE_PLUGINS"
CONFIG_ENV = "RUNV_CONFIG"  # overrides the path of runv's config file (tests, packagers)
DEFAULT_CONFIG = "/etc/runv/config.toml"


@attrs.frozen
class PluginInfo:
    """An installed plugin as its entry point describes it (nothing imported)."""

    name: str
    kind: str
    value: str
    distribution: str
    version: str

    def load(self) -> Any:
        """Imports the plugin; any exception becomes a :class:`LoadError` naming it."""
        try:
            return metadata.EntryPoint(self.name, self.value, GROUPS[self.kind]).load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break runv
            raise LoadError(self, exc) from exc


class LoadError(RunvError):
    """A plugin whose import raised."""

    def __init__(self, plugin: PluginInfo, exc: BaseException) -> None:
        self.plugin = plugin
        self.reason = f"{type(exc).__name__}: {exc}"
        super().__init__(
            f"{plugin.kind} plugin {plugin.name!r} ({plugin.distribution} {plugin.version}) "
            f"failed to load: {self.reason}"
        )


def installed() -> list[PluginInfo]:
    """Every plugin installed, from entry-point metadata only."""
    found = []
    for kind, group in GROUPS.items():
        for ep in metadata.entry_points(group=group):
            dist = ep.dist
            found.append(
                PluginInfo(
                    name=ep.name,
                    kind=kind,
                    value=ep.value,
                    distribution=dist.name if dist else "?",
                    version=dist.version if dist else "?",
                )
            )
    return sorted(found, key=lambda p: (p.kind, p.name))


def config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def config() -> dict:
    """runv's config file (``/etc/runv/config.toml``, or ``$RUNV_CONFIG``); ``{}`` when absent."""
    import tomllib

    path = config_path()
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RunvError(f"cannot read {path}: {exc}") from None


def disabled() -> dict[str, str]:
    """Plugins switched off without uninstalling them, each with what switched it off:
    ``RUNV_DISABLE_PLUGINS=a,b`` and ``[plugins] disabled = ["a"]`` in the config file."""
    off = {}
    names = config().get("plugins", {}).get("disabled", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RunvError(f"{config_path()}: [plugins] disabled must be a list of plugin names")
    for name in names:
        off[name] = config_path()
    for name in os.environ.get(DISABLE_ENV, "").split(","):
        if name.strip():
            off[name.strip()] = DISABLE_ENV
    return off


def disabled_names() -> set[str]:
    """The names of the plugins :func:`disabled` switches off."""
    return set(disabled())


def available(kind: str) -> dict[str, PluginInfo]:
    """Installed, enabled plugins of one kind, by name."""
    off = disabled_names()
    return {p.name: p for p in installed() if p.kind == kind and p.name not in off}


def choose(kind: str, name: str) -> PluginInfo:
    """The enabled plugin ``name`` of ``kind``, or an error listing the ones there are."""
    plugins = available(kind)
    if name in plugins:
        return plugins[name]
    names = ", ".join(sorted(plugins)) or "none"
    off = disabled()
    why = f"is disabled by {off[name]}" if name in off else "is not installed"
    raise RunvError(f"{kind} plugin {name!r} {why} (available: {names}; see `runv plugins`)")


def choose_hypervisor(name: str, log=lambda message: None) -> tuple[PluginInfo, Any]:
    """Loads the hypervisor plugin ``name``; ``auto`` takes the usable one with the highest
    ``PRIORITY``. An explicit choice that cannot run here fails with its probe's reason."""
    if name != AUTO:
        info = choose("hypervisor", name)
        module = info.load()
        reason = module.probe()
        if reason:
            raise RunvError(f"hypervisor {name!r} cannot run here: {reason}")
        return info, module
    candidates = []
    reasons = []
    for info in available("hypervisor").values():
        try:
            module = info.load()
        except LoadError as exc:
            reasons.append(str(exc))
            continue
        candidates.append((getattr(module, "PRIORITY", 0), info, module))
    for _, info, module in sorted(candidates, key=lambda c: -c[0]):
        reason = module.probe()
        if reason is None:
            log(f"hypervisor auto: chose {info.name!r}")
            return info, module
        reasons.append(f"{info.name}: {reason}")
    detail = "; ".join(reasons) or "no hypervisor plugin is installed"
    raise RunvError(f"no usable hypervisor ({detail}); see `runv check`")


class Hooks:
    """A typed façade over the plugin manager: one keyword-only method per hook (see
    :mod:`runv.hookspecs` for what each means); firstresult hooks return one answer,
    the others a list with one entry per plugin that answered."""

    def __init__(self, *plugins: tuple[str, Any]) -> None:
        import pluggy

        from runv import hookspecs
        from runv.sandbox import builtin

        self.pm = pluggy.PluginManager("runv")
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(builtin, "runv.builtin")
        for name, plugin in plugins:
            self.pm.register(plugin, name)
        self.hook = self.pm.hook

    def probe(self) -> str | None:
        return self.hook.probe()

    def attach_storage(self, *, container: Container) -> StorageAttachment | None:
        return self.hook.attach_storage(container=container)

    def configure_net(self, *, container: Container) -> list[VMContribution]:
        return self.hook.configure_net(container=container)

    def prepare_vm(self, *, container: Container, vm: VMSpec) -> list[VMContribution]:
        return self.hook.prepare_vm(container=container, vm=vm)

    def boot(self, *, vm: VMSpec) -> VMHandle | None:
        return self.hook.boot(vm=vm)

    def exec(self, *, container: Container, process: Process, agent: AgentClient, name: str, streams: dict) -> int:
        return self.hook.exec(container=container, process=process, agent=agent, name=name, streams=streams)

    def sync_net(self, *, container: Container, agent: AgentClient, attach: Callable[[Nic], None]) -> None:
        self.hook.sync_net(container=container, agent=agent, attach=attach)

    def attach_nic(self, *, handle: VMHandle, nic: Nic) -> bool | None:
        return self.hook.attach_nic(handle=handle, nic=nic)

    def pause_vm(self, *, handle: VMHandle) -> bool | None:
        return self.hook.pause_vm(handle=handle)

    def resume_vm(self, *, handle: VMHandle) -> bool | None:
        return self.hook.resume_vm(handle=handle)

    def stop_vm(self, *, handle: VMHandle, force: bool) -> bool | None:
        return self.hook.stop_vm(handle=handle, force=force)

    def detach_storage(self, *, container: Container, attachment: StorageAttachment) -> None:
        self.hook.detach_storage(container=container, attachment=attachment)

    def release_net(self, *, container: Container) -> None:
        self.hook.release_net(container=container)

    def template_shape(self, *, vm: VMSpec) -> dict | None:
        return self.hook.template_shape(vm=vm)

    def save_template(self, *, vm: VMSpec, directory: Path, compress: bool, ready: Callable[[VMHandle], None]) -> dict | None:
        return self.hook.save_template(vm=vm, directory=directory, compress=compress, ready=ready)

    def restore_template(self, *, vm: VMSpec, directory: Path, record: dict) -> VMHandle | None:
        return self.hook.restore_template(vm=vm, directory=directory, record=record)


def load(hypervisor: str, storage: str, log=lambda message: None) -> tuple[Hooks, str, str]:
    """Loads the selected hypervisor and storage plugins and the extras; returns the hooks
    and the resolved hypervisor and storage names."""
    hv_info, hv = choose_hypervisor(hypervisor, log)
    st_info = choose("storage", storage)
    plugins = [(hv_info.name, hv), (st_info.name, st_info.load())]
    for info in available("extra").values():
        plugins.append((info.name, info.load()))
    return Hooks(*plugins), hv_info.name, st_info.name


def load_hypervisor(name: str) -> Hooks:
    """Loads one hypervisor plugin by name (for pause, resume and teardown of a VM it runs)."""
    return Hooks((name, choose("hypervisor", name).load()))

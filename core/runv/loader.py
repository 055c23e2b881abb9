"""Finding, selecting and loading plugins.

Plugins declare themselves with entry points, one group per kind, so listing them needs
no import. Only the selected hypervisor and storage plugin (plus the always-on extras)
are imported; an import that fails, or a plugin whose hooks do not match the
specifications, becomes a recorded :class:`LoadError`, never a crash of an unrelated
command. Tests (and embedders) may also register a plugin in-process with
:func:`register_local`, as if it were installed.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable

from runv.api.config import config, config_path
from runv.api.errors import RunvError
from runv.api.frozen import Frozen
from runv.hooks import Hooks

if TYPE_CHECKING:
    from runv.api.hypervisor import VM, HypervisorInfo
    from runv.api.vm import GuestModules

GROUPS = {"hypervisor": "runv.hypervisors", "storage": "runv.storage", "extra": "runv.extras"}
AUTO = "auto"
# plugins that had another name: state records and callers may still use it (runv 0.1's "overlay")
RENAMED = {("storage", "overlay"): "bundle"}
DISABLE_ENV = "RUNV_DISABLE_PLUGINS"
IN_PROCESS = "(in-process)"  # the distribution of a plugin registered with register_local
_LOCAL: dict[tuple[str, str], Any] = {}


class PluginInfo(Frozen):
    """An installed plugin as its entry point describes it (nothing imported)."""

    name: str
    kind: str
    value: str
    distribution: str
    version: str

    def load(self) -> Any:
        """Imports the plugin; any exception becomes a :class:`LoadError` naming it."""
        if self.distribution == IN_PROCESS:
            return _LOCAL[(self.kind, self.name)]
        try:
            return metadata.EntryPoint(self.name, self.value, GROUPS[self.kind]).load()
        except Exception as exc:
            raise LoadError(self, exc) from exc


class LoadError(RunvError):
    """A plugin whose import raised, or whose hooks do not fit the specifications."""

    def __init__(self, plugin: PluginInfo, exc: BaseException | str) -> None:
        self.plugin = plugin
        self.reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        super().__init__(
            f"{plugin.kind} plugin {plugin.name!r} ({plugin.distribution} {plugin.version}) "
            f"failed to load: {self.reason}"
        )


def register_local(kind: str, name: str, plugin: Any) -> None:
    """Makes ``plugin`` (a module or object with hooks) an installed plugin of ``kind``
    for this process, without an entry point; :func:`unregister_local` undoes it."""
    if kind not in GROUPS:
        raise ValueError(f"unknown plugin kind {kind!r} (one of {', '.join(GROUPS)})")
    _LOCAL[(kind, name)] = plugin


def unregister_local(kind: str, name: str) -> None:
    _LOCAL.pop((kind, name), None)


def installed() -> list[PluginInfo]:
    """Every plugin installed, from entry-point metadata only."""
    found = [PluginInfo(name, kind, repr(plugin), IN_PROCESS, "-") for (kind, name), plugin in _LOCAL.items()]
    for kind, group in GROUPS.items():
        for ep in metadata.entry_points(group=group):
            if (kind, ep.name) in _LOCAL:
                continue
            dist = ep.dist
            found.append(PluginInfo(name=ep.name, kind=kind, value=ep.value,
                                    distribution=dist.name if dist else "?", version=dist.version if dist else "?"))
    return sorted(found, key=lambda p: (p.kind, p.name))


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


def available(kind: str) -> dict[str, PluginInfo]:
    """Installed, enabled plugins of one kind, by name."""
    off = disabled()
    return {p.name: p for p in installed() if p.kind == kind and p.name not in off}


def choose(kind: str, name: str) -> PluginInfo:
    """The enabled plugin ``name`` of ``kind``, or an error listing the ones there are."""
    plugins = available(kind)
    name = RENAMED.get((kind, name), name)
    if name in plugins:
        return plugins[name]
    names = ", ".join(sorted(plugins)) or "none"
    off = disabled()
    why = f"is disabled by {off[name]}" if name in off else "is not installed"
    raise RunvError(f"{kind} plugin {name!r} {why} (available: {names}; see `runv plugins`)")


def hooks_of(info: PluginInfo) -> Hooks:
    """The plugin alone with the core's hooks; a misspelt or misshapen hook is a LoadError."""
    import pluggy

    plugin = info.load()
    try:
        return Hooks((info.name, plugin))
    except pluggy.PluginValidationError as exc:
        raise LoadError(info, str(exc)) from None


class Hypervisor(Frozen):
    """A loaded hypervisor plugin: its hooks, alone, and its declaration."""

    name: str
    hooks: Hooks
    info: HypervisorInfo

    def probe(self) -> str | None:
        return self.hooks.probe()

    def reattach(self, record: dict) -> VM:
        """The VM a state record describes, driven by this plugin's VM class."""
        return self.info.vm.from_record(record)


def load_hypervisor(name: str) -> Hypervisor:
    """Loads the hypervisor plugin ``name`` and checks its declaration is whole."""
    info = choose("hypervisor", name)
    hooks = hooks_of(info)
    declared = hooks.hypervisor_info()
    if declared is None:
        raise LoadError(info, "it implements no hypervisor_info hook (is it a hypervisor plugin?)")
    if problems := declared.problems():
        raise LoadError(info, "; ".join(problems))
    return Hypervisor(name, hooks, declared)


def choose_hypervisor(name: str, log: Callable[[str], None] = lambda message: None) -> Hypervisor:
    """The hypervisor ``name``; ``auto`` takes the usable one with the highest priority.
    A choice that cannot run here fails with its probe's reason."""
    if name != AUTO:
        hypervisor = load_hypervisor(name)
        if reason := hypervisor.probe():
            raise RunvError(f"hypervisor {name!r} cannot run here: {reason}")
        return hypervisor
    candidates, reasons = [], []
    for info in available("hypervisor").values():
        try:
            candidates.append(load_hypervisor(info.name))
        except LoadError as exc:
            reasons.append(str(exc))
    for hypervisor in sorted(candidates, key=lambda h: -h.info.priority):
        reason = hypervisor.probe()
        if reason is None:
            log(f"hypervisor auto: chose {hypervisor.name!r}")
            return hypervisor
        reasons.append(f"{hypervisor.name}: {reason}")
    detail = "; ".join(reasons) or "no hypervisor plugin is installed"
    raise RunvError(f"no usable hypervisor ({detail}); see `runv check`")


def extras() -> list[tuple[str, Any]]:
    """The always-on plugins, loaded; one that fails to load is logged and left out."""
    from runv.log import logger

    loaded = []
    for info in available("extra").values():
        try:
            loaded.append((info.name, info.load()))
        except LoadError as exc:
            logger.warning("%s", exc)
    return loaded


class Selection(Frozen):
    """The plugins one container runs with."""

    hooks: Hooks
    hypervisor: Hypervisor
    storage: str


def load(hypervisor: str, storage: str, log: Callable[[str], None] = lambda message: None) -> Selection:
    """Loads the selected hypervisor and storage plugins and the extras, all on one set of hooks."""
    import pluggy

    chosen = choose_hypervisor(hypervisor, log)
    st_info = choose("storage", storage)
    plugins = [(chosen.name, chosen.hooks.pm.get_plugin(chosen.name)), (st_info.name, st_info.load())]
    try:
        hooks = Hooks(*plugins, *[(info.name, info.load()) for info in available("extra").values()])
    except pluggy.PluginValidationError as exc:
        raise RunvError(f"a plugin does not fit runv's hooks: {exc}") from None
    return Selection(hooks, chosen, st_info.name)


def teardown_hooks(storage: str | None) -> Hooks:
    """The hooks teardown needs: the extras (``release_net``) and, when named, the storage
    plugin (``detach_storage``); a plugin that fails to load is logged and left out."""
    from runv.log import logger

    plugins = extras()
    if storage:
        try:
            plugins.append((storage, choose("storage", storage).load()))
        except RunvError as exc:
            logger.warning("%s", exc)
    return Hooks(*plugins)


def guest_modules(warn: Callable[[str], None]) -> GuestModules:
    """What every installed, enabled plugin asks of the guest image (its ``guest_modules``);
    a plugin that fails to load is ``warn``ed about and left out."""
    from runv.api.vm import GuestModules

    wanted = GuestModules()
    for info in sorted((p for p in installed() if p.name not in disabled()), key=lambda p: (p.kind, p.name)):
        try:
            answers = hooks_of(info).guest_modules()
        except LoadError as exc:
            warn(f"{exc}: the guest image will lack what it needs")
            continue
        for answer in answers:
            wanted = wanted.plus(answer)
    return wanted

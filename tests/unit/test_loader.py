"""The plugin loader (runv.loader): misfitting plugins become LoadErrors, declarations are
checked whole, plugins can be switched off, and tests register plugins in-process."""

from __future__ import annotations

import pytest

from runv import loader
from runv.api import VM, Capabilities, HypervisorInfo, RunvError, TemplateSupport, hookimpl
from runv.loader import IN_PROCESS, LoadError
from runv.testing import fakevmm, registered


class Hypervisor:
    """A whole, minimal hypervisor plugin (an object: pluggy takes either)."""

    def __init__(self, priority=0, reason=None, info=None):
        self.priority, self.reason, self.info = priority, reason, info

    @hookimpl
    def hypervisor_info(self):
        return self.info or HypervisorInfo(capabilities=Capabilities(), priority=self.priority)

    @hookimpl
    def probe(self):
        return self.reason

    @hookimpl
    def boot(self, vm):
        return VM("x", 1, None)


class Misspelt(Hypervisor):
    @hookimpl
    def boot_vm(self, vm):  # no such hook
        return None


class WrongArguments(Hypervisor):
    @hookimpl
    def boot(self, spec):  # the hook's argument is `vm`
        return None


class NotAHypervisor:
    @hookimpl
    def prepare_vm(self, container, vm):
        return None


@pytest.fixture(autouse=True)
def no_config(hermetic):
    """No host config file (its [plugins] disabled list would change the answers)."""


def test_a_misspelt_hook_fails_the_load_with_its_name():
    with registered("hypervisor", "typo", Misspelt()):
        with pytest.raises(LoadError, match=r"hypervisor plugin 'typo' \(\(in-process\) -\) failed to load: .*boot_vm"):
            loader.load_hypervisor("typo")


def test_a_hook_with_the_wrong_arguments_fails_the_load():
    with registered("hypervisor", "args", WrongArguments()):
        with pytest.raises(LoadError, match="spec"):
            loader.load_hypervisor("args")


def test_a_plugin_without_hypervisor_info_is_no_hypervisor():
    with registered("hypervisor", "net-ish", NotAHypervisor()):
        with pytest.raises(LoadError, match="implements no hypervisor_info hook"):
            loader.load_hypervisor("net-ish")


def test_an_import_that_fails_is_a_load_error_naming_the_plugin():
    info = loader.PluginInfo("gone", "hypervisor", "runv_no_such_package", "runv-gone", "1.0")
    with pytest.raises(LoadError, match=r"'gone' \(runv-gone 1.0\) failed to load: ModuleNotFoundError"):
        info.load()


class HalfTemplates(TemplateSupport):
    def shape(self, vm):
        return {}


class Pauses(VM):
    def pause(self):
        pass

    def resume(self):
        pass


@pytest.mark.parametrize(("info", "problems"), [
    (HypervisorInfo(Capabilities()), []),
    (fakevmm.hypervisor_info(), []),
    (HypervisorInfo(Capabilities(), templates=HalfTemplates()),
     ["templates are declared but boot, restore, VM.save not implemented"]),
    (HypervisorInfo(Capabilities(), templates=object()), ["templates must be a runv.api.TemplateSupport"]),
    (HypervisorInfo(Capabilities(pause=True)),
     ["capabilities.pause is declared but VM.pause is not implemented",
      "capabilities.pause is declared but VM.resume is not implemented"]),
    (HypervisorInfo(Capabilities(pause=True), vm=Pauses), []),
    (HypervisorInfo(Capabilities(nic_hotplug=True), vm=Pauses),
     ["capabilities.nic_hotplug is declared but Pauses.attach_nic is not implemented"]),
    (HypervisorInfo(Capabilities(), vm=dict), ["vm must be a subclass of runv.api.VM, not <class 'dict'>"]),
], ids=["minimal", "fake", "half-templates", "templates-object", "pause", "pause-implemented", "hotplug", "not-a-vm"])
def test_declaration_problems(info, problems):
    assert info.problems() == problems


def test_a_declaration_with_problems_fails_the_load():
    info = HypervisorInfo(Capabilities(), templates=HalfTemplates())
    with registered("hypervisor", "half", Hypervisor(info=info)):
        with pytest.raises(LoadError, match="templates are declared but boot, restore, VM.save not implemented"):
            loader.load_hypervisor("half")


def test_in_process_registration_lasts_for_the_block():
    with registered("hypervisor", "mine", Hypervisor()) as plugin:
        found = {p.name: p for p in loader.installed() if p.kind == "hypervisor"}
        assert found["mine"].distribution == IN_PROCESS
        assert loader.load_hypervisor("mine").hooks.pm.get_plugin("mine") is plugin
    assert "mine" not in loader.available("hypervisor")
    with pytest.raises(RunvError, match="hypervisor plugin 'mine' is not installed"):
        loader.choose("hypervisor", "mine")


def test_in_process_registration_wins_over_an_installed_plugin_of_the_same_name():
    with registered("storage", "bundle", object()):
        assert loader.choose("storage", "bundle").distribution == IN_PROCESS
    assert loader.choose("storage", "bundle").distribution == "runv-bundle"
    assert loader.choose("storage", "overlay").name == "bundle"  # its name before 0.2, in older records


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown plugin kind 'hypervisors'"):
        loader.register_local("hypervisors", "x", object())


def test_plugins_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv(loader.DISABLE_ENV, "mine, other")
    with registered("hypervisor", "mine", Hypervisor()):
        assert "mine" not in loader.available("hypervisor")
        with pytest.raises(RunvError, match=r"'mine' is disabled by RUNV_DISABLE_PLUGINS \(available: "):
            loader.choose("hypervisor", "mine")


def test_plugins_disabled_by_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[plugins]\ndisabled = ["mine"]\n')
    monkeypatch.setenv("RUNV_CONFIG", str(config))
    with registered("hypervisor", "mine", Hypervisor()):
        with pytest.raises(RunvError, match=f"'mine' is disabled by {config}"):
            loader.choose("hypervisor", "mine")
    config.write_text('[plugins]\ndisabled = "mine"\n')
    with pytest.raises(RunvError, match=r"\[plugins\] disabled must be a list of plugin names"):
        loader.disabled()


@pytest.fixture
def only_in_process(monkeypatch):
    """Every installed hypervisor switched off: `auto` chooses among in-process ones."""
    names = [p.name for p in loader.installed() if p.kind == "hypervisor" and p.distribution != IN_PROCESS]
    monkeypatch.setenv(loader.DISABLE_ENV, ",".join(names))


def test_auto_takes_the_usable_hypervisor_with_the_highest_priority(only_in_process):
    logged = []
    with (registered("hypervisor", "low", Hypervisor(priority=1)),
          registered("hypervisor", "high", Hypervisor(priority=9, reason="no /dev/kvm")),
          registered("hypervisor", "mid", Hypervisor(priority=5)),
          registered("hypervisor", "typo", Misspelt(priority=100))):
        assert loader.choose_hypervisor("auto", logged.append).name == "mid"
    assert logged == ["hypervisor auto: chose 'mid'"]


def test_auto_with_nothing_usable_says_why_for_each(only_in_process):
    with registered("hypervisor", "high", Hypervisor(reason="no /dev/kvm")), registered("hypervisor", "typo", Misspelt()):
        with pytest.raises(RunvError) as failed:
            loader.choose_hypervisor("auto")
    message = str(failed.value)
    assert message.startswith("no usable hypervisor (") and message.endswith("; see `runv check`")
    assert "high: no /dev/kvm" in message and "'typo'" in message and "boot_vm" in message


def test_a_named_hypervisor_that_cannot_run_here_says_its_probe():
    with registered("hypervisor", "high", Hypervisor(reason="no /dev/kvm")):
        with pytest.raises(RunvError, match="^hypervisor 'high' cannot run here: no /dev/kvm$"):
            loader.choose_hypervisor("high")


def test_reattach_uses_the_plugin_s_vm_class():
    with registered("hypervisor", "fake", fakevmm):
        hypervisor = loader.load_hypervisor("fake")
    vm = hypervisor.reattach({"hypervisor": "fake", "pid": 1, "start_time": 2, "data": {"mntns": "mnt:[1]"}})
    assert type(vm) is fakevmm.FakeVM and vm.record()["data"] == {"mntns": "mnt:[1]"}


def test_selection_puts_hypervisor_storage_and_extras_on_one_set_of_hooks():
    with registered("hypervisor", "fake", fakevmm):
        selection = loader.load("fake", "bundle")
    assert selection.hypervisor.name == "fake" and selection.storage == "bundle"
    names = {name for name, _ in selection.hooks.pm.list_name_plugin()}
    assert {"fake", "bundle", "runv.builtin"} <= names
    assert selection.hypervisor.info.capabilities == fakevmm.CAPABILITIES

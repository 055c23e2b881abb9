"""The typed façade over the hooks keeps up with the hook specifications."""

import inspect

import pluggy
import pytest

from runv import hookspecs
from runv.api import VM, hookimpl
from runv.hooks import Hooks

FACADE_EXTRAS = {"implemented"}  # façade methods that are no hook


def spec_names():
    return {name for name, value in vars(hookspecs).items() if hasattr(value, "runv_spec")}


def test_every_hookspec_has_a_facade_method_with_its_arguments():
    methods = {name for name, _ in inspect.getmembers(Hooks, inspect.isfunction) if not name.startswith("_")}
    assert methods - FACADE_EXTRAS == spec_names()
    for name in spec_names():
        spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
        facade_args = [p for p in inspect.signature(getattr(Hooks, name)).parameters if p != "self"]
        assert facade_args == spec_args, name


class FakeHypervisor:
    """A plugin registered in-process, as plugin authors test theirs."""

    booted = []

    @hookimpl
    def boot(self, vm):
        self.booted.append(vm)
        return VM("fake", 1234, None, {"name": vm})

    @hookimpl
    def probe(self):
        return "no such hardware"


def test_facade_calls_reach_plugins_and_firstresult_returns_one_answer():
    hooks = Hooks(("fake", FakeHypervisor()))
    vm = hooks.boot(vm="spec")
    assert isinstance(vm, VM) and vm.pid == 1234 and vm.data == {"name": "spec"}
    assert FakeHypervisor.booted == ["spec"]
    assert hooks.probe() == "no such hardware"
    assert hooks.configure_net(container=None) == []  # a contributing hook nobody implements
    assert hooks.implemented("fake") == ["boot", "probe"]


class Misspelt:
    @hookimpl
    def stop_vm(self, handle, force):  # a hook of the old API: no longer a specification
        return True


def test_a_hookimpl_that_matches_no_specification_fails_registration():
    with pytest.raises(pluggy.PluginValidationError, match="stop_vm"):
        Hooks(("old", Misspelt()))

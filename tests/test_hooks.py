"""The typed façade over the hooks keeps up with the hook specifications."""

import inspect

from runv.api import hookimpl, hookspecs
from runv.loader import Hooks


def spec_names():
    return {name for name, value in vars(hookspecs).items() if hasattr(value, "runv_spec")}


def test_every_hookspec_has_a_facade_method_with_its_arguments():
    methods = {name for name, _ in inspect.getmembers(Hooks, inspect.isfunction) if not name.startswith("_")}
    assert methods == spec_names()
    for name in spec_names():
        spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
        facade_args = [p for p in inspect.signature(getattr(Hooks, name)).parameters if p != "self"]
        assert facade_args == spec_args, name


class FakeHypervisor:
    """A plugin registered in-process, as plugin authors test theirs."""

    stopped = []

    @hookimpl
    def stop_vm(self, handle, force):
        self.stopped.append((handle, force))
        return True

    @hookimpl
    def probe(self):
        return "no such hardware"


def test_facade_calls_reach_plugins_and_firstresult_returns_one_answer():
    hooks = Hooks(("fake", FakeHypervisor()))
    assert hooks.stop_vm(handle="h", force=True) is True
    assert FakeHypervisor.stopped == [("h", True)]
    assert hooks.probe() == "no such hardware"
    assert hooks.configure_net(container=None) == []  # a contributing hook nobody implements

"""The default template `runv guest build` keeps: made when missing or stale, not remade
(nothing booted) while it is current. The hypervisor is a stand-in whose boot is counted."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from runv import loader
from runv.api import Capabilities, HypervisorInfo, TemplateSupport
from runv.settings import Settings
from runv.templates import make, match, store


class Booted(Exception):
    """What the stand-in's boot raises once it has counted the boot."""


class CountingTemplates(TemplateSupport):
    def __init__(self):
        self.boots = []

    def shape(self, vm):
        return {"machine": "q35", "shares": [s.tag for s in vm.shares]}

    def boot(self, vm, state_dir, private):
        self.boots.append(vm)
        raise Booted


@pytest.fixture
def setup(tmp_path, monkeypatch):
    (tmp_path / "kernel").write_bytes(b"k" * 10)
    (tmp_path / "initrd.img").write_bytes(b"i" * 20)
    monkeypatch.setenv(store.DIR_ENV, str(tmp_path / "templates"))
    templates = CountingTemplates()
    hypervisor = SimpleNamespace(name="fake", info=HypervisorInfo(capabilities=Capabilities(), templates=templates))
    monkeypatch.setattr(loader, "choose_hypervisor", lambda *_: hypervisor)
    settings = Settings(kernel=tmp_path / "kernel", initrd=tmp_path / "initrd.img")
    return settings, templates


def save_record(settings, vm, clones="private") -> str:
    """What a successful create leaves: the template's record, made from the current guest."""
    vm_shape = match.shape(vm, "fake", CountingTemplates())
    name = match.default_name(vm_shape)
    (store.directory() / name).mkdir(parents=True)
    record = {"name": name, "created": "2026-01-01T00:00:00Z", "shape": vm_shape, "shares": ["rootfs"],
              "source": match.source(settings.kernel, settings.initrd), "saved": {"files": {}}, "clones": clones}
    (store.directory() / name / store.RECORD).write_text(json.dumps(record))
    return name


def test_missing_then_current_then_stale(setup):
    settings, templates = setup
    with pytest.raises(Booted):
        make.create(settings, unless_current=True)  # none yet: boots
    assert len(templates.boots) == 1 and not any(store.directory().iterdir())  # the failed make left nothing
    save_record(settings, templates.boots[0])

    assert make.create(settings, unless_current=True) is None  # current: nothing booted
    assert len(templates.boots) == 1
    with pytest.raises(Booted):  # current, but private: a shared one is asked for, so it is remade
        make.create(settings, unless_current=True, private=False)
    assert len(templates.boots) == 2
    templates.boots.pop()

    os.utime(settings.initrd, ns=(0, 0))  # a rebuilt initrd: the template is stale, so it is remade
    with pytest.raises(Booted):
        make.create(settings, unless_current=True)
    assert len(templates.boots) == 2


def test_without_unless_current_a_current_template_is_remade(setup):
    settings, templates = setup
    with pytest.raises(Booted):
        make.create(settings)
    save_record(settings, templates.boots[0])
    with pytest.raises(Booted):
        make.create(settings)
    assert len(templates.boots) == 2

"""The one teardown (runv.vm.teardown.teardown): its order, every step run whatever
failed before, the first failure raised, and convergence when there is nothing left."""

from __future__ import annotations

import pytest

from runv.api import VM, RunvError, StorageAttachment
from runv.api.vm import GuestMount
from runv.testing import container
from runv.vm import teardown as module
from runv.vm.teardown import teardown

ATTACHMENT = StorageAttachment(rootfs=GuestMount.of_share("rootfs"))


class Recorder:
    """Stands in for the VM, the hooks and the volumes; ``fail`` names the steps that raise."""

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.calls = []

    def step(self, name, **details):
        self.calls.append((name, details) if details else name)
        if name in self.fail:
            raise RunvError(f"{name} failed")

    def vm(self):
        recorder = self

        class RecordingVM(VM):
            def stop(self, force=False):
                recorder.step("stop", force=force)

        return RecordingVM("test", 0, None)

    def release_net(self, *, container):
        self.step("release_net")

    def detach_storage(self, *, container, attachment):
        assert attachment is ATTACHMENT
        self.step("detach_storage")


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(module.volumes, "release", lambda state_dir: recorder.step("volumes"))
    monkeypatch.setattr(module, "empty_cgroup", lambda state_dir: recorder.step("cgroup"))
    return recorder


@pytest.fixture
def box(tmp_path):
    return container(tmp_path)


ORDER = [("stop", {"force": False}), "cgroup", "release_net", "volumes", "detach_storage"]  # the pod's copies hold the storage


def test_steps_run_in_order(recorder, box):
    teardown(box, recorder, recorder.vm(), ATTACHMENT)
    assert recorder.calls == ORDER


def test_force_reaches_the_vm(recorder, box):
    teardown(box, recorder, recorder.vm(), ATTACHMENT, force=True)
    assert recorder.calls[0] == ("stop", {"force": True})


@pytest.mark.parametrize("failing", ["stop", "cgroup", "release_net", "volumes", "detach_storage"])
def test_every_step_runs_when_one_fails_and_its_error_is_raised(recorder, box, failing):
    recorder.fail = {failing}
    with pytest.raises(RunvError, match=f"^{failing} failed$"):
        teardown(box, recorder, recorder.vm(), ATTACHMENT)
    assert recorder.calls == ORDER


def test_the_first_failure_is_raised_when_several_fail(recorder, box):
    recorder.fail = {"release_net", "volumes"}
    with pytest.raises(RunvError, match="^release_net failed$"):
        teardown(box, recorder, recorder.vm(), ATTACHMENT)
    assert recorder.calls == ORDER


def test_a_crash_before_boot_has_no_vm_and_no_attachment(recorder, box):
    teardown(box, recorder, None, None)
    assert recorder.calls == ["cgroup", "release_net", "volumes"]


def test_unexpected_exceptions_do_not_stop_the_others(recorder, box, monkeypatch):
    def boom(*, container):
        raise KeyError("netns")

    monkeypatch.setattr(recorder, "release_net", boom)
    with pytest.raises(KeyError):
        teardown(box, recorder, recorder.vm(), ATTACHMENT)
    assert recorder.calls == [("stop", {"force": False}), "cgroup", "volumes", "detach_storage"]


def test_it_converges_on_what_is_already_gone(box):
    """The real steps, twice, on a container whose VM and mounts are long gone."""
    from runv.hooks import Hooks

    box.state_dir.mkdir()
    gone = VM("test", 2**22 + 12345, 1)  # no such process: stop returns at once
    for _ in range(2):
        teardown(box, Hooks(), gone, ATTACHMENT, force=True)

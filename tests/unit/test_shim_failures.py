"""The shim's failure paths, with plugins registered in-process (the shim is forked from
this process, so it sees them): every failed ``create`` says why in one line, exits 1 and
leaves no state directory, mount or process behind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from runv.api import VM, HypervisorInfo, RunvError, StorageAttachment, hookimpl, process_start_time
from runv.cli.app import main
from runv.testing import fakevmm, leftovers_in, registered
from runv.vm import bringup


class BootRaises:
    """A hypervisor whose VMM cannot start."""

    @hookimpl
    def hypervisor_info(self):
        return HypervisorInfo(capabilities=fakevmm.CAPABILITIES.evolve(pause=False))

    @hookimpl
    def probe(self):
        return None

    @hookimpl
    def boot(self, vm):
        raise RunvError(f"no hardware for {vm.name}")


SILENT = """
import socket, sys, time
print("agent: stuck before ready", file=sys.stderr, flush=True)
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(1)
connection = server.accept()
time.sleep(1000)
"""


class SilentAgent(BootRaises):
    """A VM whose agent accepts the connection and never says ``ready``."""

    @hookimpl
    def boot(self, vm):
        with open(vm.console_log, "ab") as console:
            vmm = subprocess.Popen([sys.executable, "-c", SILENT, "agent.sock"], cwd=vm.state_dir,
                                   stdout=console, stderr=console, start_new_session=True)
        time.sleep(0.01)
        return VM("silent", vmm.pid, process_start_time(vmm.pid))


class DiesAtBoot(BootRaises):
    """A VM that prints its last words and exits before its agent starts."""

    @hookimpl
    def boot(self, vm):
        with open(vm.console_log, "ab") as console:
            vmm = subprocess.Popen(["sh", "-c", "echo 'Kernel panic - not syncing: VFS' >&2; sleep 0.2"],
                                   stdout=console, stderr=console, start_new_session=True)
        return VM("dies", vmm.pid, process_start_time(vmm.pid))


class AttachesNothing:
    """A storage plugin that forgets to return its attachment."""

    detached = 0

    @hookimpl
    def attach_storage(self, container):
        return None

    @hookimpl
    def detach_storage(self, container, attachment):
        AttachesNothing.detached += 1


@pytest.fixture
def create(root, guest_files, hermetic, make_bundle, monkeypatch, capsys, tmp_path):
    """``create(*global_options)`` runs ``runv [OPTIONS] create`` of a busybox container
    in this process (main(), as the console script does); returns (exit code, stderr)."""
    kernel, initrd = guest_files
    bundle = make_bundle(["sleep", "1000"])

    def call(*options):
        argv = ["runv", "--root", str(root), "--kernel", str(kernel), "--initrd", str(initrd), *options,
                "create", "--bundle", str(bundle), "box"]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exited:
            main()
        return exited.value.code, capsys.readouterr().err

    yield call
    assert not (root / "box").exists()
    assert leftovers_in(tmp_path) == []


def one_line(err: str) -> str:
    assert err.startswith("runv: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err


def test_a_boot_that_raises_fails_create_in_one_line(create):
    with registered("hypervisor", "broken", BootRaises()):
        code, err = create("--hypervisor", "broken")
    assert code == 1
    assert one_line(err) == "runv: no hardware for box\n"


def test_an_agent_that_never_answers_times_out_with_the_vm_s_last_words(create, monkeypatch):
    monkeypatch.setattr(bringup, "AGENT_TIMEOUT", 1.0)
    started = time.monotonic()
    with registered("hypervisor", "silent", SilentAgent()):
        code, err = create("--hypervisor", "silent")
    assert code == 1 and time.monotonic() - started < 10
    assert "did not answer within 1 s" in one_line(err) and "agent: stuck before ready" in err


def test_a_vm_that_dies_during_boot_says_what_it_printed(create):
    with registered("hypervisor", "dies", DiesAtBoot()):
        code, err = create("--hypervisor", "dies")
    assert code == 1
    assert "exited during boot" in one_line(err) and "Kernel panic - not syncing: VFS" in err


def test_storage_that_attaches_nothing_fails_before_boot(create):
    AttachesNothing.detached = 0
    with registered("hypervisor", "fake", fakevmm), registered("storage", "nothing", AttachesNothing()):
        code, err = create("--hypervisor", "fake", "--storage", "nothing")
    assert code == 1
    assert one_line(err) == "runv: storage plugin 'nothing' attached nothing for container box\n"
    assert AttachesNothing.detached == 0  # nothing was attached: nothing to detach


def test_a_share_that_cannot_be_mounted_fails_create_in_one_line(create, make_bundle, root):
    """The storage plugin names a rootfs that does not exist: putting it in the pod
    directory fails before the VM boots, in one line naming it."""

    class MissingRootfs:
        @hookimpl
        def attach_storage(self, container):
            from runv.api import GuestMount, Share

            return StorageAttachment(rootfs=GuestMount.of_share("rootfs"),
                                     shares=(Share("rootfs", container.bundle / "no-such-dir"),))

    with registered("hypervisor", "fake", fakevmm), registered("storage", "missing", MissingRootfs()):
        code, err = create("--hypervisor", "fake", "--storage", "missing")
    assert code == 1
    assert "no-such-dir" in one_line(err)

"""The example hypervisor plugin's own tests, with the helpers runv ships for plugin authors.

Cloud Hypervisor cannot run on most test hosts (it needs hardware KVM, and Debian has no
package), so these tests check what the plugin decides on any host: its command lines
against golden files, its probe's words, its declaration against the core's checks, and
its process handling with stand-ins for ``cloud-hypervisor`` and ``virtiofsd``
(``tests/fakes/``) that run no guest but behave as those programs do towards runv.
``python tests/test_cloudhv.py`` (or runv's scripts/regenerate-golden) rewrites the golden
files from the code: review the diff before committing it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

try:
    import runv_cloudhv
except ImportError:  # collected by runv's own test run from a checkout, without installing the example
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import runv_cloudhv

from runv.api import Disk, GuestMount, Nic, RunvError, Share, is_running
from runv.testing import attach_nic, check_vm, guest_mount, hooks_with, kernel_args, leftovers_in, load_hypervisor, vm_spec
from runv_cloudhv import command
from runv_cloudhv.vm import CloudHvVM

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
FAKES = HERE / "fakes"
CAPS = runv_cloudhv.CAPABILITIES
STATE = Path("/run/runv/c1")  # the golden specs' state directory (nothing is written there)
ARGS = ("panic=-1", "rdinit=/init", "runv.agent=vsock:1024", "quiet")  # what the core gives (see below)


def golden_vms() -> dict:
    return {
        "minimal": vm_spec(STATE, name="c1", kernel_args=ARGS),
        "shares": vm_spec(STATE, name="c1", kernel_args=ARGS, vcpus=2, memory_mib=512, shares=(
            Share("rootfs", Path("/bundles/c1/rootfs")),
            Share("vol0", Path("/srv/data"), readonly=True),
        )),
        "disks-nics": vm_spec(STATE, name="c1", kernel_args=ARGS, disks=(
            Disk("rootfs", Path("/var/cache/runv/storage/base-1234.ext4"), readonly=True),
            Disk("upper", STATE / "upper.img"),
        ), nics=(
            Nic(id="eth0", fd=7, mac="02:42:ac:11:00:02"),
            Nic(id="eth1", fd=9, mac="02:42:ac:12:00:02", mtu=9000),
        )),
    }


def rendered(vm) -> str:
    """Every command line the plugin would run for ``vm``, one argument a line."""
    text = "# cloud-hypervisor\n" + "".join(f"{arg}\n" for arg in command.command(vm))
    for index, share in enumerate(vm.shares):
        text += f"# virtiofsd for share {share.tag}\n"
        text += "".join(f"{arg}\n" for arg in command.virtiofsd_command(vm, index))
    return text


def regenerate() -> None:
    """Rewrites every golden file from the code."""
    for name, vm in golden_vms().items():
        (GOLDEN / f"{name}.args").write_text(rendered(vm))


@pytest.mark.parametrize("name", sorted(golden_vms()))
def test_command_lines_match_golden(name):
    assert rendered(golden_vms()[name]) == (GOLDEN / f"{name}.args").read_text()


def test_the_core_tells_the_agent_to_listen_on_vsock_1024():
    assert kernel_args(False, CAPS) == ARGS  # the golden specs' kernel arguments are the core's


@pytest.mark.parametrize("disk", ["/images/a,b.img", '/images/"quoted".img', "/images/[x].img"])
def test_values_the_vmm_would_misparse_are_refused(disk, tmp_path):
    with pytest.raises(RunvError, match="cloud-hypervisor cannot take the disk"):
        command.command(vm_spec(tmp_path, disks=(Disk("rootfs", Path(disk)),)))


def test_a_share_directory_virtiofsd_would_misparse_is_refused(tmp_path):
    vm = vm_spec(tmp_path, shares=(Share("rootfs", Path("/bundles/a,b/rootfs")),))
    with pytest.raises(RunvError, match="virtiofsd cannot take the directory of share 'rootfs' '/bundles/a,b/rootfs'"):
        command.virtiofsd_command(vm, 0)


def test_a_tag_longer_than_virtio_fs_allows_is_refused(tmp_path):
    with pytest.raises(RunvError, match="virtio-fs tags are at most 36 bytes"):
        command.command(vm_spec(tmp_path, shares=(Share("t" * 37, tmp_path),)))


# ---------------------------------------------------------------- the declaration and the core's checks


def test_the_declaration_is_whole():
    info = hooks_with(runv_cloudhv).hypervisor_info()
    assert info.problems() == []
    assert info.vm is CloudHvVM and info.templates is None and info.priority == runv_cloudhv.PRIORITY
    assert info.capabilities.agent.kernel_args() == ("runv.agent=vsock:1024",)
    assert info.capabilities.agent.connect_preamble == "CONNECT 1024"


def test_the_core_loads_it_as_a_hypervisor():
    hypervisor = load_hypervisor("cloudhv", runv_cloudhv)  # what `runv plugins`, `check` and `create` do
    assert hypervisor.info.capabilities == CAPS
    assert hypervisor.hooks.implemented("cloudhv") == ["boot", "guest_modules", "hypervisor_info", "probe"]
    vm = hypervisor.reattach({"hypervisor": "cloudhv", "pid": 1, "start_time": None, "data": {"api": "/x"}})
    assert isinstance(vm, CloudHvVM) and vm.data == {"api": "/x"}


def test_the_core_refuses_qcow2_disks_before_boot(tmp_path):
    vm = vm_spec(tmp_path, name="c1", disks=(Disk("rootfs", tmp_path / "rootfs.qcow2", format="qcow2"),))
    with pytest.raises(RunvError) as refused:
        check_vm(vm, CAPS, "cloudhv")
    assert str(refused.value) == f"hypervisor 'cloudhv' cannot attach qcow2 disks ({tmp_path / 'rootfs.qcow2'}); it takes raw"


def test_the_core_accepts_shares_raw_disks_and_nics(tmp_path):
    check_vm(golden_vms()["shares"], CAPS, "cloudhv")
    check_vm(golden_vms()["disks-nics"], CAPS, "cloudhv")


def test_the_core_refuses_to_hot_plug_a_nic():
    vm = CloudHvVM("cloudhv", 1, None, {})
    with pytest.raises(RunvError, match="hypervisor 'cloudhv' cannot hot-plug network interfaces \\(NIC eth1\\)"):
        attach_nic(vm, CAPS, Nic(id="eth1", fd=5, mac="02:00:00:00:00:01"))


def test_the_core_mounts_shares_as_virtiofs_and_disks_by_serial():
    vm = golden_vms()["shares"]
    share = guest_mount(GuestMount.of_share("rootfs", readonly=True), vm, CAPS)
    assert (share["source"], share["fstype"], share["options"], share["readonly"]) == ("rootfs", "virtiofs", "", True)
    vm = golden_vms()["disks-nics"]
    disk = guest_mount(GuestMount.of_disk("upper", "ext4", target="/run/runv/upper"), vm, CAPS)
    assert (disk["source"], disk["fstype"]) == ("serial:upper", "ext4")  # the agent finds it by its serial


# ---------------------------------------------------------------- the probe


@pytest.fixture
def bare_host(tmp_path, monkeypatch):
    """No cloud-hypervisor and no virtiofsd anywhere, no config file."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("RUNV_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.delenv(command.PATH_ENV, raising=False)
    monkeypatch.delenv(command.VIRTIOFSD_ENV, raising=False)
    monkeypatch.setattr(command, "VIRTIOFSD_CANDIDATES", (str(tmp_path / "virtiofsd"),))
    return tmp_path


def test_probe_names_both_missing_programs_and_how_to_get_them(bare_host):
    reason = hooks_with(runv_cloudhv).probe()
    assert reason.startswith("cloud-hypervisor not found on PATH: Debian has no package for it; install a static "
                             "release binary (v35 or later) from github.com/cloud-hypervisor/cloud-hypervisor/releases")
    assert f"; virtiofsd not found (PATH, {bare_host / 'virtiofsd'}): install the virtiofsd package" in reason
    assert "\n" not in reason


def test_probe_names_a_configured_binary_that_is_not_there(bare_host, monkeypatch):
    install_fakes(bare_host, monkeypatch)  # a virtiofsd, so only the VMM is missing
    monkeypatch.setenv(command.PATH_ENV, "/opt/nowhere/cloud-hypervisor")
    assert hooks_with(runv_cloudhv).probe() == (
        "cloud-hypervisor not found on RUNV_CLOUDHV=/opt/nowhere/cloud-hypervisor: Debian has no package for it; "
        "install a static release binary (v35 or later) from github.com/cloud-hypervisor/cloud-hypervisor/releases "
        "and put it on PATH, or set RUNV_CLOUDHV or [cloudhv] path")


def test_probe_with_both_programs_defers_to_the_kvm_verdict(bare_host, monkeypatch):
    install_fakes(bare_host, monkeypatch)
    monkeypatch.setattr(runv_cloudhv, "kvm_verdict", lambda: {"reason": "no /dev/kvm: enable VT-x"})
    assert hooks_with(runv_cloudhv).probe() == "no /dev/kvm: enable VT-x"
    monkeypatch.setattr(runv_cloudhv, "kvm_verdict", lambda: {"reason": None})
    assert hooks_with(runv_cloudhv).probe() is None


def test_probe_on_this_host_says_what_is_missing():
    reason = hooks_with(runv_cloudhv).probe()
    if command.cloud_hypervisor() is None:
        assert reason.startswith("cloud-hypervisor not found")
    if command.virtiofsd() is None:
        assert "virtiofsd not found" in reason


# ---------------------------------------------------------------- boot, pause, stop (with stand-ins)


def install_fakes(directory: Path, monkeypatch) -> None:
    for name, script in (("cloud-hypervisor", "cloud_hypervisor.py"), ("virtiofsd", "virtiofsd.py")):
        wrapper = directory / "bin" / name
        wrapper.parent.mkdir(exist_ok=True)
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKES / script} \"$@\"\n")
        wrapper.chmod(0o755)
    monkeypatch.setenv(command.PATH_ENV, str(directory / "bin" / "cloud-hypervisor"))
    monkeypatch.setenv(command.VIRTIOFSD_ENV, str(directory / "bin" / "virtiofsd"))


@pytest.fixture
def fakes(bare_host, monkeypatch):
    install_fakes(bare_host, monkeypatch)
    state = bare_host / "state"
    state.mkdir()
    (bare_host / "rootfs").mkdir()
    (bare_host / "data").mkdir()
    vm = vm_spec(state, name="c1", kernel_args=ARGS, shares=(Share("rootfs", bare_host / "rootfs"),
                                                            Share("vol0", bare_host / "data", readonly=True)))
    return vm


def alive(pairs) -> list[int]:
    return [pid for pid, start_time in pairs if is_running(pid, start_time)]


def test_boot_starts_a_virtiofsd_per_share_then_the_vmm(fakes):
    vm = hooks_with(runv_cloudhv).boot(vm=fakes)
    try:
        assert isinstance(vm, CloudHvVM) and vm.alive() and vm.hypervisor == "cloudhv"
        assert json.loads((fakes.state_dir / "fake-ch.argv").read_text()) == vm.data["argv"][1:]
        assert vm.data["argv"] == command.command(fakes, vm.data["argv"][0])
        for index, share in enumerate(fakes.shares):
            argv = json.loads((fakes.state_dir / f"fake-virtiofsd.virtiofs-{index}.sock.argv").read_text())
            assert argv == [f"--socket-path=virtiofs-{index}.sock", "-o", f"source={share.path}"]
        assert len(alive(vm.data["virtiofsd"])) == 2
    finally:
        vm.stop()


def test_a_later_command_pauses_resumes_and_stops_it_from_the_record(fakes):
    booted = hooks_with(runv_cloudhv).boot(vm=fakes)
    servers = booted.data["virtiofsd"]
    try:
        vm = CloudHvVM.from_record(json.loads(json.dumps(booted.record())))  # what the state file keeps
        vm.pause()
        vm.resume()
        assert vm.info() == {"state": "Running"}
        with pytest.raises(RunvError, match=r"cloud-hypervisor refused vm.nothing \(HTTP 405\): unknown endpoint"):
            vm.api("vm.nothing")
        started = time.monotonic()
        vm.stop()
        assert not vm.alive() and alive(servers) == []
        assert time.monotonic() - started < 3  # it quit when asked: no grace period, no SIGKILL
        requests = (fakes.state_dir / "fake-ch.requests").read_text().splitlines()
        assert requests == ["PUT /api/v1/vm.pause", "PUT /api/v1/vm.resume", "PUT /api/v1/vm.nothing",
                            "PUT /api/v1/vmm.shutdown"]
        vm.stop()  # converges on a VM that is gone
    finally:
        booted.stop(force=True)


def test_stop_after_the_vmm_crashed_still_stops_the_virtiofsd_processes(fakes):
    vm = hooks_with(runv_cloudhv).boot(vm=fakes)
    os.kill(vm.pid, signal.SIGKILL)
    started = time.monotonic()
    vm.stop()
    assert not vm.alive() and alive(vm.data["virtiofsd"]) == []
    assert time.monotonic() - started < 5


def test_stop_when_the_api_does_not_answer_terminates_the_vmm(fakes):
    vm = hooks_with(runv_cloudhv).boot(vm=fakes)
    os.unlink(vm.data["api"])  # the API is gone, the process is not
    started = time.monotonic()
    vm.stop()
    assert not vm.alive() and alive(vm.data["virtiofsd"]) == []
    assert time.monotonic() - started < 3  # SIGTERM, not the grace period and SIGKILL


def test_a_vmm_that_refuses_to_start_fails_with_its_words_and_leaves_nothing(fakes, monkeypatch):
    monkeypatch.setenv("FAKE_CH_FAIL", "Error parsing --fs: socket missing")
    with pytest.raises(RunvError) as failed:
        hooks_with(runv_cloudhv).boot(vm=fakes)
    assert str(failed.value).startswith("cloud-hypervisor failed to start (exit 1): ")
    assert "Error parsing --fs: socket missing" in str(failed.value)
    assert leftovers_in(fakes.state_dir) == []  # the virtiofsd processes it had started are gone


def test_boot_without_the_programs_says_what_is_missing(bare_host):
    vm = vm_spec(bare_host, name="c1", shares=(Share("rootfs", bare_host),))
    with pytest.raises(RunvError, match="cannot boot the VM of container c1: cloud-hypervisor not found on PATH"):
        hooks_with(runv_cloudhv).boot(vm=vm)


if __name__ == "__main__":
    regenerate()

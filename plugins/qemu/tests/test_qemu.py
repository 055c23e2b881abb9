"""The qemu hypervisor plugin (QEMU with KVM): its boot with real KVM where the host has it,
its failure in QEMU's own words (a stand-in QEMU that refuses as QEMU does when KVM cannot give
the vCPU asked for), and what runv does with the KVM probe's verdict, written for the test
(runv.testing.kvm_verdict_cache) so that it runs on any host."""

from __future__ import annotations

import os

import pytest

from runv.api import RunvError, vmmcgroup
from runv.testing import KVM_SOFTWARE_ONLY, kvm_verdict_cache, vm_processes_in, vm_spec
from runv.testing.host import INITRD, KERNEL, fake_program
from runv_qemu.command import BINARY
from runv_qemu.driver import QemuVM
from runv_qemu.plugin import CPU_ENV
from runv_qemu.plugin import hypervisor as plugin

REFUSAL = ("qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]\n"
           "qemu-system-x86_64: Host doesn't support requested features\n")  # -cpu qemu64,enforce under PVM's KVM


@pytest.fixture
def refusing_qemu(tmp_path, monkeypatch):
    """A ``qemu-system-x86_64`` first on PATH that says what QEMU says when KVM refuses its vCPU, and exits."""
    fake_program(tmp_path / "bin" / BINARY, f"cat >&2 <<'EOF'\n{REFUSAL}EOF\nexit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")


@pytest.fixture
def software_kvm(tmp_path, monkeypatch):
    """runv (this process's children) takes KVM for software-only here, whatever the host has."""
    monkeypatch.setenv("RUNV_KVM_CACHE", str(kvm_verdict_cache(tmp_path / "kvm-verdict.json")))


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this host")
def test_qemu_starts_with_kvm(tmp_path, monkeypatch):
    """The plugin's real boot path: QEMU up with KVM enabled, vCPUs created, QMP answering."""
    monkeypatch.setenv(CPU_ENV, "qemu64")  # -cpu host aborts on PVM's KVM
    vm = plugin.boot(vm=vm_spec(tmp_path, name="c1", kernel=KERNEL, initrd=INITRD))
    try:
        assert isinstance(vm, QemuVM) and vm.alive()
        assert vm_processes_in(tmp_path) == [vm.pid]  # QEMU, as the plugin declares it (HypervisorInfo.programs)
        status = vm.status()
        assert status["status"] == "running" and status["running"]
        assert status["kvm"] == {"enabled": True, "present": True}
        assert "-accel kvm" in " ".join(vm.data["argv"])
        # a later CLI call drives the same VM from its state record
        again = plugin.hypervisor_info().vm.from_record(vm.record())
        again.pause()
        assert vm.status()["status"] == "paused"
        again.resume()
        assert vm.status()["status"] == "running"
    finally:
        vm.stop(force=False)
    assert not vm.alive()


@pytest.mark.usefixtures("refusing_qemu")
def test_boot_fails_with_qemus_own_words_when_kvm_refuses(tmp_path):
    """QEMU exiting at start (as when KVM refuses the CPU model asked for) fails boot with its
    own words, in one line, and leaves no QEMU and no cgroup behind."""
    for name in ("kernel", "initrd.img"):
        (tmp_path / name).write_bytes(b"")
    vm = None
    try:
        with pytest.raises(RunvError) as err:
            vm = plugin.boot(vm=vm_spec(tmp_path, name="c1", kernel=tmp_path / "kernel", initrd=tmp_path / "initrd.img"))
    finally:
        if vm is not None:
            vm.stop(force=True)
    message = str(err.value)
    assert message.startswith("qemu-system-x86_64 failed to start (exit 1): ")
    assert "Host doesn't support requested features" in message and "\n" not in message
    assert vm_processes_in(tmp_path) == []
    assert all(not d.exists() for d in vmmcgroup.for_vm(tmp_path).dirs())


@pytest.mark.usefixtures("refusing_qemu", "software_kvm", "hermetic")
def test_explicit_qemu_fails_at_create_with_the_probes_reason(runv, make_bundle, guest_files):
    kernel, initrd = guest_files
    result = runv("--kernel", kernel, "--initrd", initrd, "--hypervisor", "qemu", "create", "-b", make_bundle(["true"]), "c1")
    assert result.returncode == 1
    assert result.stderr == f"runv: hypervisor 'qemu' cannot run here: {KVM_SOFTWARE_ONLY}\n"


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image", "software_kvm")
def test_auto_chooses_tcg_when_kvm_is_software_only_and_says_so(runv, make_bundle):
    result = runv("--debug", "--kernel", KERNEL, "--initrd", INITRD, "run", "-b", make_bundle(["true"]), "c1")
    assert result.returncode == 0, result.stderr
    assert "hypervisor auto: chose 'tcg'" in result.stderr

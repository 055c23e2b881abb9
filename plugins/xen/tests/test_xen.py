"""The xen hypervisor plugin without Xen: its ``xl`` domain configs against golden files, the
core's checks of its VMs, and its VM's life driven through a fake ``xl``; ``xl -N create``
of the configs only where this host is a Xen dom0.

``python plugins/xen/tests/test_xen.py`` (or scripts/regenerate-golden) rewrites the golden
files from the code: review the diff before committing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import runv_xen
from runv.api import Disk, GuestMount, Nic, RunvError, Share
from runv.testing import check_vm, guest_mount, kernel_args, vm_spec
from runv.testing.host import fake_program

GOLDEN = Path(__file__).resolve().with_name("golden")
CAPS = runv_xen.CAPABILITIES
HAS_XEN = shutil.which("xl") is not None and os.path.exists("/proc/xen/capabilities")


def golden_vms() -> dict:
    """VMs as the core builds them: the agent's kernel argument comes from the capabilities
    (the core's kernel_args), not from the plugin."""
    full = vm_spec(Path("/run/runv/c1"), name="c1", memory_mib=512, vcpus=2, kernel_args=kernel_args(False, CAPS),
                   shares=(Share("rootfs", Path("/bundles/c1/rootfs")),),
                   disks=(Disk("data", Path("/var/lib/runv/c1.img"), readonly=True),))
    minimal = vm_spec(Path("/run/runv/c2"), name="c2", kernel=Path("/k"), initrd=Path("/i"),
                      kernel_args=CAPS.agent.kernel_args(), shares=(Share("rootfs", Path("/b/rootfs"), readonly=True),))
    return {"xen-9p-disk.cfg": full, "xen-minimal.cfg": minimal}


def regenerate() -> None:
    """Rewrites every golden file from the code."""
    for name, vm in golden_vms().items():
        (GOLDEN / name).write_text(runv_xen.config(vm))


@pytest.mark.parametrize("golden", sorted(golden_vms()))
def test_config_matches_golden(golden):
    vm = golden_vms()[golden]
    check_vm(vm, CAPS, "xen")
    assert runv_xen.config(vm) == (GOLDEN / golden).read_text()


def test_disks_are_found_by_order():
    vm = golden_vms()["xen-9p-disk.cfg"]
    assert guest_mount(GuestMount.of_disk("data", "ext4"), vm, CAPS)["source"] == "/dev/xvda"
    rootfs = guest_mount(GuestMount.of_share("rootfs"), vm, CAPS)
    assert (rootfs["fstype"], rootfs["source"], rootfs["options"]) == ("9p", "rootfs", "trans=xen,version=9p2000.L")


def test_a_vm_with_a_nic_is_refused_in_one_line(tmp_path):
    """xen cannot take the net plugin's open taps: the core refuses the VM before boot."""
    assert not CAPS.nics and runv_xen.hypervisor_info().problems() == []
    check_vm(vm_spec(tmp_path, name="c1"), CAPS, "xen")  # no NIC: fine
    with pytest.raises(RunvError) as err:
        check_vm(vm_spec(tmp_path, name="c1", nics=(Nic(id="eth0", fd=7, mac="02:00:00:00:00:01"),)), CAPS, "xen")
    assert str(err.value).startswith("hypervisor 'xen' cannot give a VM network interfaces, and the network namespace "
                                     "of container c1 has 1") and "\n" not in str(err.value)


def test_config_refuses_what_xl_cannot_parse(tmp_path):
    with pytest.raises(RunvError):
        runv_xen.config(vm_spec(tmp_path, kernel_args=('a="b"',)))
    with pytest.raises(RunvError):
        runv_xen.config(vm_spec(tmp_path, shares=(Share("rootfs", Path("/a,b")),)))


def test_commands_and_probe():
    assert runv_xen.create_command("/s/domain.cfg")[-3:] == ["create", "-F", "/s/domain.cfg"]
    assert runv_xen.create_command("/s/domain.cfg", dry_run=True)[-3:] == ["-N", "create", "/s/domain.cfg"]
    if not HAS_XEN:
        reason = runv_xen.probe()
        assert reason and ("xl not found" in reason or "Xen" in reason)


def fake_xl(directory: Path, create: str) -> Path:
    """An ``xl`` that logs its arguments; ``create`` is its ``create`` branch (a domain
    "exists" while the file ``domain`` does)."""
    log = directory / "xl.log"
    fake_program(directory / "xl", f"""echo "$@" >> {log}
case "$1" in
  create) {create};;
  list) test -e {directory}/domain;;
  shutdown|destroy) rm -f {directory}/domain; kill $(cat {directory}/xl.pid);;
esac
""")
    return log


def test_vm_life_with_a_fake_xl(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    log = fake_xl(bin_dir, f"echo $$ > {bin_dir}/xl.pid; touch {bin_dir}/domain; exec sleep 60")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = vm_spec(tmp_path, name="c1", kernel_args=CAPS.agent.kernel_args())
    vm = runv_xen.boot(vm=spec)
    try:
        assert (tmp_path / "domain.cfg").read_text() == runv_xen.config(spec)
        again = runv_xen.hypervisor_info().vm.from_record(vm.record())
        again.pause()
        again.resume()
        again.stop()
        assert not vm.alive()
        calls = log.read_text().splitlines()
        assert [c for c in calls if not c.startswith("list")] == [
            f"create -F {tmp_path / 'domain.cfg'}", "pause runv-c1", "unpause runv-c1", "shutdown runv-c1"]
    finally:
        vm.stop(force=True)


def test_boot_fails_with_xls_own_words(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_xl(bin_dir, "echo 'libxl: error: cannot connect to xenstore' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(RunvError) as err:
        runv_xen.boot(vm=vm_spec(tmp_path, name="c1"))
    assert str(err.value) == "xl create runv-c1 failed to start (exit 1): libxl: error: cannot connect to xenstore"


@pytest.mark.skipif(not HAS_XEN, reason="xl needs a running Xen hypervisor (dom0), even for `xl -N create`")
@pytest.mark.parametrize("golden", sorted(golden_vms()))
def test_config_passes_xl_dry_run(golden, tmp_path):
    path = tmp_path / golden
    path.write_text(runv_xen.config(golden_vms()[golden]))
    out = subprocess.run(runv_xen.create_command(path, dry_run=True), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


if __name__ == "__main__":
    regenerate()

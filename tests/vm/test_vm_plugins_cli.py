"""Plugins around real containers: a container runs next to a broken plugin and with the
example plugin plainfs installed into a throwaway virtualenv (the ``plainfs_venv`` fixture,
tests/conftest.py), and `runv check` chooses tcg where KVM is software-only (the verdict
written for the test); without VMs: tests/unit/test_plugins_cli.py."""

from __future__ import annotations

import json

import pytest

from runv.testing import KVM_SOFTWARE_ONLY, kvm_verdict_cache
from runv.testing.host import INITRD, KERNEL


@pytest.mark.usefixtures("guest_image")
def test_runv_run_works_next_to_a_broken_plugin(runv, broken_plugin_env, make_bundle):
    result = runv("--kernel", KERNEL, "--initrd", INITRD, "run", "-b", make_bundle(["echo", "hi"]), "c1", env=broken_plugin_env)
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


@pytest.mark.usefixtures("guest_image")
def test_check_where_kvm_is_software_only(runv, plugin_env, tmp_path):
    """`runv check` on this host with KVM's verdict written for the test (software-only) and no
    lkvm: qemu and kvmtool are unusable, tcg is the default (unless this host is a Xen dom0)."""
    import runv_xen

    env = {**plugin_env, "RUNV_KVM_CACHE": str(kvm_verdict_cache(tmp_path / "kvm.json")), "RUNV_LKVM": str(tmp_path / "lkvm")}
    result = runv("--kernel", KERNEL, "--initrd", INITRD, "check", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    entries = {e["name"]: e for e in report["entries"]}
    assert (entries["qemu"]["status"], entries["qemu"]["reason"]) == ("unusable", KVM_SOFTWARE_ONLY)
    assert entries["tcg"]["status"] == "ok" and entries["bundle"]["status"] == "ok"
    assert entries["kvmtool"]["status"] == "unusable" and entries["kvmtool"]["reason"].startswith("lkvm not found")
    xen = runv_xen.probe() is None
    assert entries["xen"]["status"] == ("ok" if xen else "unusable")
    chosen = "xen" if xen else "tcg"
    shares = "virtiofs" if chosen == "tcg" else "9p"  # QEMU's shares go over virtio-fs where virtiofsd is (Debian's QEMU has it)
    assert report["default"] == {"hypervisor": chosen, "requested_hypervisor": "auto", "storage": "bundle",
                                 "shares": shares, "can_run": True, "problems": []}
    text = runv("--kernel", KERNEL, "--initrd", INITRD, "check", env=env).stdout
    assert text.splitlines()[-1] == f"default: hypervisor {chosen} (auto), storage bundle, shares over {shares}: can run"


@pytest.mark.usefixtures("guest_image")
def test_example_plugin_runs_a_container(plainfs_venv, plugin_env, make_bundle, tmp_path):
    bundle = make_bundle(["cat", "/proc/mounts"])
    result = plainfs_venv.runv("--root", tmp_path / "state", "--kernel", KERNEL, "--initrd", INITRD,
                               "--storage", "plainfs", "run", "-b", bundle, "c1", env=plugin_env)
    try:
        assert result.returncode == 0, result.stderr
        # plainfs's rootfs share, as every share, through the VM's one share (the pod directory)
        assert any(line.split()[1:3] == ["/", "virtiofs"] for line in result.stdout.splitlines()), result.stdout
    finally:
        plainfs_venv.runv("--root", tmp_path / "state", "delete", "--force", "c1", env=plugin_env)

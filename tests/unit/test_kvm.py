"""The KVM probe (runv.api.kvm): each branch of its verdict with a fake vendor module, device
node and measuring child, its cache, and on this host only what holds on every host."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from runv.api import kvm
from runv.testing import KVM_SOFTWARE_ONLY, kvm_verdict_cache

HARDWARE = {"api": 12, "setup_s": 0.001, "run_s": 0.0002, "exit": "hlt", "completed": True, "instructions": 200000}


@pytest.fixture
def host(tmp_path, monkeypatch):
    """``host(vendor, child=dict | str | TimeoutExpired)``: a device node that exists, the vendor
    module loaded, and what the measuring child prints (its JSON, or other output) or raises."""
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    monkeypatch.setattr(kvm, "DEVICE", str(device))

    def make(vendor, child):
        monkeypatch.setattr(kvm, "vendor", lambda: vendor)

        def run(argv, **kwargs):
            assert argv[-2:] == ["-m", "runv.api.kvm"] and kwargs["timeout"] == kvm.TIMEOUT
            if isinstance(child, Exception):
                raise child
            stdout = json.dumps(child) if isinstance(child, dict) else child
            return subprocess.CompletedProcess(argv, 0, stdout=stdout, stderr="Traceback ...\nOSError: ioctl failed\n")

        monkeypatch.setattr(kvm.subprocess, "run", run)

    return make


def test_no_device(monkeypatch):
    monkeypatch.setattr(kvm, "DEVICE", "/nonexistent/kvm")
    verdict = kvm.verdict()
    assert not verdict["usable"] and verdict["reason"].startswith("no /nonexistent/kvm: enable VT-x/AMD-V")


def test_no_permission(host, monkeypatch):
    host("kvm_intel", HARDWARE)
    monkeypatch.setattr(kvm.os, "access", lambda path, mode: False)
    assert kvm.verdict()["reason"] == f"no permission to open {kvm.DEVICE}: add this user to the kvm group, or use --hypervisor tcg"


def test_hardware_kvm_is_usable(host):
    host("kvm_intel", HARDWARE)
    verdict = kvm.verdict()
    assert verdict["usable"] and verdict["reason"] is None
    assert verdict["vendor"] == "kvm_intel" and verdict["mips"] == 1000.0


def test_pvm_is_software_only_however_fast(host):
    host("kvm_pvm", HARDWARE)
    verdict = kvm.verdict()
    assert not verdict["usable"]
    assert verdict["reason"].startswith("KVM is software-only here (PVM, the kvm_pvm module): a test guest ran 200000 "
                                        "instructions in 0 ms")
    assert verdict["reason"].endswith("use --hypervisor tcg, or a host with VT-x/AMD-V")


def test_a_slow_guest_is_software_only_whatever_the_vendor(host):
    host("kvm_amd", {**HARDWARE, "run_s": 0.04})
    verdict = kvm.verdict()
    assert not verdict["usable"] and verdict["mips"] == 5.0
    assert verdict["reason"].startswith("KVM is software-only here (vendor module kvm_amd): a test guest ran 200000 "
                                        "instructions in 40 ms (5.0 M/s, emulated;")


def test_a_guest_that_does_not_halt(host):
    host("kvm_intel", {**HARDWARE, "completed": False, "exit": "shutdown"})
    assert kvm.verdict()["reason"] == (f"a test guest under {kvm.DEVICE} stopped with exit 'shutdown' instead of halting: "
                                       "use --hypervisor tcg")


def test_a_child_that_cannot_run_the_guest(host):
    host("kvm_intel", {"error": "Operation not permitted (PermissionError)"})
    assert kvm.verdict()["reason"] == (f"{kvm.DEVICE} cannot run a test guest (Operation not permitted (PermissionError)): "
                                       "use --hypervisor tcg")


def test_a_child_that_dies_is_quoted(host):
    host("kvm_intel", "")
    assert kvm.verdict()["reason"] == f"{kvm.DEVICE} cannot run a test guest (OSError: ioctl failed): use --hypervisor tcg"


def test_a_wedged_child_is_a_verdict_not_a_hang(host):
    host(None, subprocess.TimeoutExpired(["python"], kvm.TIMEOUT))
    verdict = kvm.verdict()
    assert not verdict["usable"] and verdict["vendor"] is None
    assert verdict["reason"] == (f"a 4-instruction test guest did not halt within 5 s under {kvm.DEVICE}: KVM is not "
                                 "usable, use --hypervisor tcg")


def test_the_verdict_is_measured_once_per_key(tmp_path, monkeypatch):
    monkeypatch.setattr(kvm, "CACHE", tmp_path / "cache.json")
    measured = []
    monkeypatch.setattr(kvm, "verdict", lambda: measured.append(1) or {"usable": True, "reason": None})
    assert kvm.cached_verdict() == kvm.cached_verdict() == {"usable": True, "reason": None}
    assert measured == [1] and json.loads(kvm.CACHE.read_text())["key"] == kvm.cache_key()
    monkeypatch.setattr(kvm, "cache_key", lambda: {"boot_id": "another boot"})
    kvm.cached_verdict()
    assert measured == [1, 1]


def test_a_written_verdict_is_taken_instead_of_probing(tmp_path, monkeypatch):
    monkeypatch.setattr(kvm, "CACHE", kvm_verdict_cache(tmp_path / "cache.json"))
    monkeypatch.setattr(kvm, "verdict", lambda: pytest.fail("probed"))
    assert kvm.cached_verdict()["reason"] == KVM_SOFTWARE_ONLY and not kvm.cached_verdict()["usable"]
    kvm_verdict_cache(kvm.CACHE, None)
    assert kvm.cached_verdict()["usable"]


def test_this_hosts_verdict_decides_in_seconds_and_says_why():
    """Whatever this host has: usable exactly when a test guest ran fast and not under PVM,
    and a reason of one line otherwise."""
    started = time.monotonic()
    verdict = kvm.verdict()
    assert time.monotonic() - started < kvm.TIMEOUT + 1
    fast = verdict.get("completed") and verdict["run_s"] <= kvm.FAST_ENOUGH
    assert verdict["usable"] == bool(fast and verdict["vendor"] != "kvm_pvm")
    assert (verdict["reason"] is None) == verdict["usable"]
    assert verdict["usable"] or "\n" not in verdict["reason"]
    assert verdict["usable"] or os.path.exists(kvm.DEVICE) or verdict["reason"].startswith(f"no {kvm.DEVICE}")

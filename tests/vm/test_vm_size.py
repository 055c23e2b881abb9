"""A container's VM sized from its ``linux.resources`` (512 MiB, a 2-CPU quota: the guest
has them), the shim and the VMM in its ``linux.cgroupsPath`` on the host (memory and
pids), what runv made of that path gone with ``delete``; and sizes or paths it cannot
honour failing ``create`` in one line, before any VM boots, leaving nothing."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from realclients import qemu_of

from runv.api import vmmcgroup

pytestmark = [
    pytest.mark.usefixtures("guest_image"),
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/fs/cgroup/memory").is_dir()
                       and not Path("/sys/fs/cgroup/cgroup.controllers").exists(),
                       reason="needs root and a writable cgroupfs"),
]

CGROUPS = Path("/sys/fs/cgroup")
V2 = (CGROUPS / "cgroup.controllers").exists()
MIB = 1 << 20


def host_cgroup(pid: int, controller: str) -> str:
    """The cgroup of ``pid`` in the hierarchy of ``controller`` (v2: the unified one)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controllers == "") if V2 else controller in controllers.split(","):
            return path
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def hierarchy(controller: str) -> Path:
    return CGROUPS if V2 else CGROUPS / controller


@pytest.mark.parametrize("template", ["off", "auto"], ids=["cold", "grown-from-a-smaller-template"])
def test_the_guest_has_the_limits_and_the_vmm_is_in_the_cgroups_path(runv, make_bundle, root, tmp_path, template):
    """Booted cold at its size, or restored from the session's smaller (256 MiB, 1 vCPU)
    template and grown by hot-plug: the guest sees the same."""
    top = f"runv-test-{uuid.uuid4().hex[:8]}"
    path = f"/{top}/c1"
    linux = {"cgroupsPath": path, "resources": {"memory": {"limit": 512 * MIB}, "cpu": {"quota": 200000, "period": 100000}}}
    bundle = make_bundle(["sleep", "300"], linux=linux)
    with open(tmp_path / "out", "w") as out:
        created = runv("--template", template, "create", "--bundle", bundle, "size1", stdout=out, timeout=240)
    assert created.returncode == 0, created.stderr
    try:
        started_from = json.loads((root / "size1/template.json").read_text()) if template == "auto" else None
        assert started_from == ({"template": "test", "grown": True} if template == "auto" else None)
        assert runv("start", "size1").returncode == 0
        seen = runv("exec", "size1", "sh", "-c", "grep -E 'MemTotal|MemAvailable' /proc/meminfo; nproc")
        assert seen.returncode == 0, seen.stderr
        total_kb, available_kb, cpus = int(seen.stdout.split()[1]), int(seen.stdout.split()[4]), int(seen.stdout.split()[6])
        print(f"guest: MemTotal {total_kb >> 10} MiB, MemAvailable {available_kb >> 10} MiB, {cpus} CPUs")
        assert total_kb << 10 >= 512 * MIB and cpus == 2
        qemu, shim = qemu_of(root, "size1"), json.loads(runv("state", "size1").stdout)["pid"]
        for controller in ("memory", "pids"):
            for pid in (qemu, shim):
                assert host_cgroup(pid, controller).startswith(path + "/"), (controller, pid)
        vmm = hierarchy("memory") / host_cgroup(qemu, "memory").lstrip("/")
        limit = int((vmm / ("memory.max" if V2 else "memory.limit_in_bytes")).read_text())
        assert limit >= 2 * 512 * MIB  # the guest's RAM and the VMM's own overhead, on the VMM's own leaf
        assert (hierarchy("pids") / host_cgroup(qemu, "pids").lstrip("/") / "pids.max").read_text().strip() != "max"
        stats = runv("events", "--stats", "size1")
        assert stats.returncode == 0, stats.stderr
        memory = json.loads(stats.stdout)["data"]["memory"]["usage"]
        assert memory["limit"] >= 512 * MIB and 0 < memory["usage"] < memory["limit"]
    finally:
        runv("delete", "--force", "size1")
    for controller in ("memory", "pids"):
        assert not (hierarchy(controller) / top).exists()  # runv made the whole path: it goes


@pytest.mark.parametrize("linux, message", [
    ({"cgroupsPath": "/x/../../etc"}, "linux.cgroupsPath '/x/../../etc': a cgroupsPath may not climb with '..'"),
    ({"cgroupsPath": "machine.slice:libpod"}, "a systemd cgroupsPath is slice:prefix:name"),
    ({"resources": {"memory": {"limit": 1 << 50}}}, f"linux.resources.memory.limit {1 << 50} needs a VM of "),
    ({"resources": {"cpu": {"quota": 100000 * 4096, "period": 100000}}}, "linux.resources.cpu.quota 409600000 / period 100000 needs 4096 vCPUs"),
])
def test_what_cannot_be_honoured_fails_create_in_one_line_leaving_nothing(runv, make_bundle, root, linux, message):
    bundle = make_bundle(["true"], linux=linux)
    result = runv("create", "--bundle", bundle, "bad1")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and str(bundle / "config.json") in result.stderr
    assert not root.is_dir() or os.listdir(root) == []
    assert not any(d.exists() for d in vmmcgroup.for_vm(root / "bad1").dirs())
    assert not (hierarchy("memory") / "x").exists() and not (hierarchy("memory") / "machine.slice/libpod").exists()

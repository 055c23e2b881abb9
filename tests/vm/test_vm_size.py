"""A container's VM sized from its ``linux.resources`` (512 MiB, a 2-CPU quota: the guest
has them), the shim and the VMM in its ``linux.cgroupsPath`` on the host (in every
hierarchy, with the CPU and pids limits as runc writes them), what runv made of that path gone with ``delete``; and sizes or paths it cannot
honour failing ``create`` in one line, before any VM boots, leaving nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
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


HOST_FILES = {"cpu": ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"), "cpuset": ("cpuset.cpus",), "pids": ("pids.max",)}
HOST_FILES_V2 = {"": ("cpu.weight", "cpu.max", "cpuset.cpus", "pids.max")}


def host_limits(path: str) -> dict[str, str]:
    """The CPU and pids files of the host cgroup ``path``, as the runtime left them."""
    return {name: (hierarchy(controller) / path.lstrip("/") / name).read_text().strip()
            for controller, names in (HOST_FILES_V2 if V2 else HOST_FILES).items() for name in names}


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_the_host_cgroup_carries_the_cpu_and_pids_limits_as_runc_writes_them(runv, make_bundle, root, tmp_path):
    """The same limits under runc and runv: the same files and values at each one's
    cgroupsPath; runv's shim and QEMU are there in every hierarchy, so what the VM burns is
    the container's CPU time on the host (cpuacct), bounded by its quota; ``update`` keeps
    the host in step; ``delete`` removes the path in every hierarchy."""
    top = f"runv-test-{uuid.uuid4().hex[:8]}"
    resources = {"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
                 "pids": {"limit": 1000}}
    namespaces = [{"type": kind} for kind in ("pid", "mount", "uts", "ipc")]
    proc = [{"destination": "/proc", "type": "proc", "source": "proc"}]
    runc_root = tmp_path / "runc"
    bundle = make_bundle(["sleep", "300"], name="runc-bundle", mounts=proc,
                         linux={"cgroupsPath": f"/{top}/runc1", "resources": resources, "namespaces": namespaces})
    try:
        with open(tmp_path / "runc.out", "w") as out:  # the container keeps runc's stdio: files, not pipes
            ran = subprocess.run(["runc", "--root", str(runc_root), "run", "-d", "--bundle", str(bundle), "runc1"],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60)
        assert ran.returncode == 0, (tmp_path / "runc.out").read_text()
        theirs = host_limits(f"/{top}/runc1")
    finally:
        subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", "runc1"], capture_output=True)
    path = f"/{top}/c1"
    bundle = make_bundle(["sleep", "300"], mounts=proc, linux={"cgroupsPath": path, "resources": resources, "namespaces": namespaces})
    with open(tmp_path / "out", "w") as out:
        created = runv("run", "-d", "--bundle", bundle, "c1", stdout=out, timeout=240)
    assert created.returncode == 0, created.stderr
    try:
        assert host_limits(path) == theirs, f"runc: {theirs}"
        qemu, shim = qemu_of(root, "c1"), json.loads(runv("state", "c1").stdout)["pid"]
        for pid in (qemu, shim):
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                _, controllers, where = line.split(":", 2)
                if V2 or controllers not in ("", "name=systemd"):
                    assert where.startswith(path + "/"), (pid, line)
        usage = hierarchy("" if V2 else "cpuacct") / path.lstrip("/") / ("cpu.stat" if V2 else "cpuacct.usage")

        def used() -> float:  # seconds of CPU the container's host cgroup has used
            text = usage.read_text()
            return int(text.split()[1]) / 1e6 if V2 else int(text) / 1e9

        before, started = used(), time.monotonic()
        spun = runv("exec", "c1", "sh", "-c", "end=$(($(date +%s) + 4)); while [ $(date +%s) -lt $end ]; do :; done")
        assert spun.returncode == 0, spun.stderr
        cpu, wall = used() - before, time.monotonic() - started
        print(f"the VM used {cpu:.2f} s of CPU in {wall:.2f} s under a half-core quota")
        assert 0.25 * wall < cpu < 0.5 * wall * 1.15  # seen, and bounded by the quota
        updated = runv("update", "--cpu-quota", "100000", "--pids-limit", "2000", "c1")
        assert updated.returncode == 0, updated.stderr
        assert host_limits(path)["cpu.max" if V2 else "cpu.cfs_quota_us"] == ("100000 100000" if V2 else "100000")
        assert host_limits(path)["pids.max"] == "2000"
    finally:
        runv("delete", "--force", "c1")
    assert not [c for c in ([""] if V2 else os.listdir(CGROUPS)) if (hierarchy(c) / top / "c1").exists()]
    for controller in [""] if V2 else os.listdir(CGROUPS):
        try:
            (hierarchy(controller) / top).rmdir()  # the runc container's parent (runc leaves it)
        except OSError:
            pass


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

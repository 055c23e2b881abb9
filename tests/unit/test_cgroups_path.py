"""``linux.cgroupsPath`` on the host (runv.api.vmmcgroup): parsing and systemd expansion as
runc does them, the shim's and the VMM's leaves under it on fake v1 and v2 trees, and
the teardown removing what runv made of it and nothing of the caller's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runv.api import RunvError, vmmcgroup
from runv.oci.resources import cpu_weight
from runv.testing.host import emptied, fake_cgroup_v1, fake_cgroup_v2
from runv.vm import cgroupspath, hostlimits


def proc_self(tmp_path: Path, text: str) -> str:
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("value, path", [
    ("", ""),
    ("/libpod_parent/libpod-abc", "libpod_parent/libpod-abc"),
    ("/a//b/./c/", "a/b/c"),
    ("/", ""),
    ("k8s/pod1", "./k8s/pod1"),  # relative: below the runtime's own cgroup (runc)
    ("machine.slice:libpod:abc", "machine.slice/libpod-abc.scope"),
    ("system-runv-x.slice:runv:c1", "system.slice/system-runv.slice/system-runv-x.slice/runv-c1.scope"),
    (":runv:c1", "system.slice/runv-c1.scope"),  # no slice: runc's system.slice
    ("-.slice:runv:c1", "runv-c1.scope"),  # the root slice
    ("machine.slice::x.slice", "machine.slice/x.slice"),  # a slice as the unit is used as it is
])
def test_paths_and_systemd_forms_as_runc_reads_them(value, path):
    assert cgroupspath.parse_path(value, "config.json") == path


@pytest.mark.parametrize("value, message", [
    ("/a/../../etc", "may not climb with '..'"),
    ("../x", "may not climb with '..'"),
    ("machine.slice:libpod", "a systemd cgroupsPath is slice:prefix:name"),
    ("a:b:c:d", "a systemd cgroupsPath is slice:prefix:name"),
    ("machine.slice:libpod:", "a systemd cgroupsPath is slice:prefix:name"),
    ("machine:libpod:abc", "'machine' is not a systemd slice name"),
    ("a--b.slice:p:n", "has an empty component"),
    ("-a.slice:p:n", "has an empty component"),
])
def test_a_bad_cgroups_path_is_one_line_naming_the_field(value, message):
    with pytest.raises(RunvError) as err:
        cgroupspath.parse_path(value, "/b/config.json")
    assert str(err.value).startswith(f"/b/config.json: linux.cgroupsPath {value!r}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_v1_the_shim_goes_under_the_path_in_every_hierarchy_and_the_vmm_in_memory_and_pids(tmp_path):
    base = fake_cgroup_v1(tmp_path / "cg")
    state = tmp_path / "state/c1"
    state.mkdir(parents=True)
    (base / "memory/libpod_parent").mkdir()  # the caller's: kept
    cgroupspath.place(state, "libpod_parent/libpod-c1", 4242, base)
    name = vmmcgroup.name(state)
    for controller in ("memory", "pids", "cpu"):
        assert (base / controller / "libpod_parent/libpod-c1" / f"{name}.shim/cgroup.procs").read_text() == "4242"
    vmm = vmmcgroup.for_vm(state, base)
    assert vmm.dirs() == [base / "memory/libpod_parent/libpod-c1" / name, base / "pids/libpod_parent/libpod-c1" / name]
    vmm.create(1 << 30, 130)
    assert (vmm.dirs()[0] / "memory.limit_in_bytes").read_text() == str(1 << 30)
    assert vmmcgroup.from_record(json.loads(json.dumps(vmm.record()))).dirs() == vmm.dirs()  # a VM record finds it again
    made = json.loads((state / vmmcgroup.RECORD).read_text())["made"]
    assert made == [str(base / "memory/libpod_parent/libpod-c1"), str(base / "pids/libpod_parent"),
                    str(base / "pids/libpod_parent/libpod-c1"), str(base / "cpu/libpod_parent"),
                    str(base / "cpu/libpod_parent/libpod-c1")]
    emptied(base)
    cgroupspath.release(state)
    assert not (base / "memory/libpod_parent/libpod-c1").exists() and not (base / "pids/libpod_parent").exists()
    assert not (base / "cpu/libpod_parent").exists()
    assert (base / "memory/libpod_parent").is_dir()  # not runv's: it stays
    assert not (base / "memory/runv").exists()
    cgroupspath.release(state)  # converges


def test_v2_enables_memory_pids_and_cpu_on_the_way_down(tmp_path):
    base = fake_cgroup_v2(tmp_path / "cg")
    state = tmp_path / "c1"
    state.mkdir()
    cgroupspath.place(state, cgroupspath.parse_path("machine.slice:libpod:c1", "config.json"), 4242, base)
    scope = base / "machine.slice/libpod-c1.scope"
    for level in (base, base / "machine.slice", scope):
        assert (level / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"  # the host has no cpuset
    assert (scope / f"{vmmcgroup.name(state)}.shim/cgroup.procs").read_text() == "4242"
    vmm = vmmcgroup.for_vm(state, base)
    vmm.create(512 << 20, 130)
    assert vmm.dirs() == [scope / vmmcgroup.name(state)] and (vmm.dirs()[0] / "memory.max").read_text() == str(512 << 20)
    emptied(base / "machine.slice")
    cgroupspath.release(state)
    assert not (base / "machine.slice").exists() and (base / "cgroup.controllers").exists()


def test_a_relative_path_is_below_the_runtimes_own_cgroup(tmp_path):
    base = fake_cgroup_v1(tmp_path / "cg")
    proc = proc_self(tmp_path, "12:pids:/user.slice/u1\n11:cpu,cpuacct:/\n7:memory:/user.slice\n0::/user.slice\n")
    assert cgroupspath.resolve("./k8s/pod1", base, proc) == [base / "memory/user.slice/k8s/pod1", base / "pids/user.slice/u1/k8s/pod1",
                                                             base / "cpu/k8s/pod1"]
    v2 = fake_cgroup_v2(tmp_path / "v2")
    assert cgroupspath.resolve("./k8s", v2, proc_self(tmp_path, "0::/init.scope\n")) == [v2 / "init.scope/k8s"]


def test_the_shims_own_teardown_leaves_its_leaf_to_delete(tmp_path):
    base = fake_cgroup_v1(tmp_path / "cg")
    state = tmp_path / "c1"
    state.mkdir()
    cgroupspath.place(state, "runv-test/c1", os.getpid(), base)  # this process plays the shim
    emptied_vmm = vmmcgroup.for_vm(state, base)
    emptied_vmm.create(1 << 30, 130)
    for directory in emptied_vmm.dirs():
        emptied(directory)
    cgroupspath.release(state)
    assert not any(d.exists() for d in emptied_vmm.dirs())  # the VMM's leaf went
    shim = base / "memory/runv-test/c1" / f"{vmmcgroup.name(state)}.shim"
    assert shim.is_dir()  # the shim is still in it: `delete` removes it, once the shim is gone


def test_a_missing_hierarchy_is_one_line(tmp_path):
    base = tmp_path / "cg"
    (base / "memory").mkdir(parents=True)
    with pytest.raises(RunvError, match=f"^no cgroup v1 pids hierarchy at {base / 'pids'}"):
        cgroupspath.place(tmp_path, "a/b", 1, base)


def test_an_old_records_bare_name_is_in_runvs_parent():
    assert vmmcgroup.from_record("c1-abc").dirs() == [p / "c1-abc" for p in vmmcgroup.Cgroup("c1-abc").parents()]


RESOURCES = {"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}, "pids": {"limit": 1000}}


def test_v1_the_containers_cpu_and_pids_limits_are_at_the_path_in_runcs_files(tmp_path):
    base = fake_cgroup_v1(tmp_path / "cg")
    (base / "cpuset").mkdir()
    for name in ("cpuset.cpus", "cpuset.mems"):
        (base / "cpuset" / name).write_text("0-1\n")
    state = tmp_path / "c1"
    state.mkdir()
    cgroupspath.place(state, "runv-test/c1", 4242, base, resources=RESOURCES, vcpus=1)
    path = "runv-test/c1"
    assert {f: (base / "cpu" / path / f).read_text() for f in ("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us")} == {
        "cpu.shares": "512", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}
    assert (base / "pids" / path / "pids.max").read_text() == "1000"
    assert (base / "cpuset" / path / "cpuset.cpus").read_text() == "0"
    assert (base / "cpuset/runv-test/cpuset.mems").read_text() == "0-1"  # a new cpuset level: its parent's
    leaf = base / "cpuset" / path / f"{vmmcgroup.name(state)}.shim"
    assert (leaf / "cpuset.cpus").read_text() == "0" and (leaf / "cgroup.procs").read_text() == "4242"
    cgroupspath.update(state, {**RESOURCES, "cpu": {**RESOURCES["cpu"], "quota": -1}}, 1)  # runv update
    assert (base / "cpu" / path / "cpu.cfs_quota_us").read_text() == "-1"


def test_v2_the_containers_limits_are_the_guests_files(tmp_path):
    base = fake_cgroup_v2(tmp_path / "cg")
    state = tmp_path / "c1"
    state.mkdir()
    cgroupspath.place(state, "k/c1", 4242, base, resources=RESOURCES, vcpus=1)
    assert {f: (base / "k/c1" / f).read_text() for f in ("cpu.max", "cpu.weight", "cpuset.cpus", "pids.max")} == {
        "cpu.max": "50000 100000", "cpu.weight": str(cpu_weight(512)), "cpuset.cpus": "0", "pids.max": "1000"}


def test_a_host_pids_limit_below_what_the_vm_needs_is_raised_to_it():
    assert hostlimits.files({"pids": {"limit": 10}}, 2, v2=False) == {"pids": {"pids.max": str(hostlimits.pids_floor(2))}}
    assert hostlimits.files({"pids": {"limit": -1}}, 2, v2=True) == {"": {"pids.max": "max"}}
    assert hostlimits.files({}, 2, v2=False) == {}


def test_empty_vmm_cgroups_older_than_a_minute_are_swept(tmp_path):
    """What a crash left in runv's parent (no VMM, its state directory gone): removed by the
    next VM's cgroup creation (Cgroup.create); one in use (the kernel refuses: here, not empty) stays."""
    base = fake_cgroup_v1(tmp_path / "cg")
    for controller in ("memory", "pids"):
        (base / controller / "runv/orphan-0123456789ab").mkdir(parents=True)
        (base / controller / "runv/alive-0123456789ab").mkdir()
        (base / controller / "runv/alive-0123456789ab/cgroup.procs").write_text("4242\n")
    vmmcgroup.sweep([base / "memory/runv", base / "pids/runv"], older_than=60.0)
    assert (base / "memory/runv/orphan-0123456789ab").is_dir()  # made just now: maybe its VMM is on its way
    vmmcgroup.sweep([base / "memory/runv", base / "pids/runv"], older_than=-1.0)
    for controller in ("memory", "pids"):
        assert sorted(p.name for p in (base / controller / "runv").iterdir()) == ["alive-0123456789ab"]

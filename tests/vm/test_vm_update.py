"""``runv update`` on a running container in a VM, read from inside it: runc's flags and
``-r`` JSON land in the container's cgroup in the guest, the VM grows and shrinks with them
(memory and vCPU hot-plug); ``events --stats`` reports the new limit; a limit above the
maxima, or a value the guest refuses, fails in one line and the old limits stay."""

import json

import pytest
from test_confinement import bundle_of, default_config

pytestmark = pytest.mark.usefixtures("guest_image")

READ = "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu.weight"


@pytest.fixture
def running(runv, make_bundle, tmp_path):
    spec = default_config("exec sleep 300")
    spec["linux"]["resources"] = {"memory": {"limit": 96 << 20}, "pids": {"limit": 40}}
    with open(tmp_path / "out", "w") as out:
        assert runv("create", "--bundle", bundle_of(make_bundle, spec), "upd", stdout=out).returncode == 0
    assert runv("start", "upd").returncode == 0
    yield "upd"
    runv("delete", "--force", "upd")


def limits(runv, cid):
    result = runv("exec", cid, "sh", "-c", READ)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")[:4]


def test_flags_and_json_change_the_running_containers_cgroup(runv, running, tmp_path):
    assert limits(runv, running) == [str(96 << 20), "40", "max 100000", "100"]
    result = runv("update", "--memory", "64m", "--pids-limit", "30", "--cpu-quota", "50000", "--cpu-share", "512", running)
    assert result.returncode == 0, result.stderr
    assert limits(runv, running) == [str(64 << 20), "30", "50000 100000", "59"]  # runc's weight for 512 shares
    stats = json.loads(runv("events", "--stats", running).stdout)
    assert stats["data"]["memory"]["usage"]["limit"] == 64 << 20  # the container's cgroup, not the VM's RAM
    (tmp_path / "r.json").write_text(json.dumps({"memory": {"limit": 80 << 20}, "pids": {"limit": 25}}))
    assert runv("update", "-r", tmp_path / "r.json", running).returncode == 0
    assert limits(runv, running) == [str(80 << 20), "25", "50000 100000", "59"]  # what -r does not name stays
    assert runv("update", "-r", "-", running, stdin=None,
                input=json.dumps({"pids": {"limit": 22}}).encode()).returncode == 0
    assert limits(runv, running)[1] == "22"


def meminfo_mib(runv, cid):
    result = runv("exec", cid, "sh", "-c", "grep MemTotal /proc/meminfo; nproc")
    assert result.returncode == 0, result.stderr
    total, cpus = result.stdout.split("\n")[:2]
    return int(total.split()[1]) >> 10, int(cpus)


def test_the_vm_grows_and_shrinks_with_the_limits(runv, running):
    """virtio-mem and vCPU hot-plug: the guest sees the VM resized, the cgroup gets the limit."""
    memory, cpus = meminfo_mib(runv, running)
    assert cpus == 1
    result = runv("update", "--memory", "512m", "--cpu-quota", "200000", "--cpu-period", "100000", running)
    assert result.returncode == 0, result.stderr
    grown, cpus = meminfo_mib(runv, running)
    # a VM of 632 MiB (docs/resources.md): 376 MiB plugged, less their page map; room for the whole limit
    assert grown > 512 and grown - memory >= 360 and cpus == 2, (memory, grown)
    assert limits(runv, running)[:3] == [str(512 << 20), "40", "200000 100000"]
    assert runv("exec", running, "sh", "-c", "head -c 400m /dev/zero | tail -c 1 >/dev/null").returncode == 0  # usable
    result = runv("update", "--memory", "64m", "--cpu-quota", "100000", running)
    assert result.returncode == 0, result.stderr
    shrunk, cpus = meminfo_mib(runv, running)
    assert shrunk < grown - 256 and cpus == 1, (memory, grown, shrunk)
    assert limits(runv, running)[0] == str(64 << 20)


@pytest.mark.parametrize("args, message", [
    (["--memory", "64g"], "linux.resources.memory.limit 68719476736 needs a VM of"),
    (["--cpu-quota", "300000"], "needs 3 vCPUs, above the maximum"),
    (["--cpuset-cpus", "5"], "needs 6 vCPUs, above the maximum"),
    (["--cpuset-mems", "3"], "cannot set cpuset.mems to 3"),  # the guest has one memory node
    (["--memory", "lots"], "invalid value for --memory: invalid size 'lots'"),
    (["--l3-cache-schema", "L3:0=f"], "Intel RDT"),
])
def test_an_update_that_cannot_apply_is_one_line_and_the_old_limits_stay(runv, running, args, message):
    before = limits(runv, running)
    result = runv("update", *args, running)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert limits(runv, running) == before


def test_updating_a_container_that_does_not_run_is_refused(runv, make_bundle, tmp_path):
    assert "container nosuch does not exist" in runv("update", "--memory", "64m", "nosuch").stderr
    with open(tmp_path / "out", "w") as out:
        assert runv("create", "--bundle", bundle_of(make_bundle, default_config("true")), "done", stdout=out).returncode == 0
    assert runv("kill", "done", "KILL").returncode == 0
    result = runv("update", "--memory", "64m", "done")
    assert result.returncode == 1 and "not running" in result.stderr

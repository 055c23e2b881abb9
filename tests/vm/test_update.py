"""``runv update`` on a running container in a VM, read from inside it: runc's flags and
``-r`` JSON land in the container's cgroup in the guest; ``events --stats`` reports the new
limit; a limit the VM cannot hold, or a value the guest refuses, fails in one line and the
old limits stay."""

import json

import pytest
from test_confinement import bundle_of, default_config

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("guest_image")]

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


@pytest.mark.parametrize("args, message", [
    (["--memory", "4g"], "a memory limit of 4096 MiB does not fit its VM of 256 MiB"),
    (["--cpu-quota", "300000"], "a CPU quota of 300000/100000 needs 3 CPUs and its VM has 1"),
    (["--cpuset-cpus", "5"], "cannot set cpuset.cpus to 5"),
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

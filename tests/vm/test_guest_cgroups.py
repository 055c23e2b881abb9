"""Each container's own cgroup v2 in the guest, read from inside the container: every
``linux.resources`` file runc writes, with runc's values; exec'd processes in the same
cgroup; a pids limit enforced; bad values failing ``create`` in one line, leaving nothing."""

import uuid

import pytest
from test_confinement import bundle_of, default_config

pytestmark = pytest.mark.usefixtures("guest_image")

SHOW = ("cgroup", "cgroup.controllers", "memory.max", "memory.low", "memory.high", "memory.swap.max", "pids.max",
        "cpu.max", "cpu.weight", "cpuset.cpus", "cpuset.mems", "io.weight", "io.max", "hugetlb.2MB.max")
# prints NAME=VALUE for each file of the container's cgroup (/sys/fs/cgroup is its cgroup namespace's root)
REPORT = ("echo \"cgroup=$(cat /proc/self/cgroup)\"; for f in " + " ".join(SHOW[1:]) +
          "; do [ -e /sys/fs/cgroup/$f ] && echo \"$f=$(cat /sys/fs/cgroup/$f)\"; done; true")


def values(text):
    return dict(line.split("=", 1) for line in text.splitlines() if line.split("=", 1)[0] in SHOW)


def run_with(runv, make_bundle, resources, script=REPORT, name="bundle", annotations=None):
    spec = default_config(script)
    spec["linux"]["resources"] = resources
    if annotations:
        spec["annotations"] = annotations
        spec["root"]["readonly"] = False  # the overlay mode's upper disk is for a writable root
    return runv("run", "--bundle", bundle_of(make_bundle, spec, name), f"c{uuid.uuid4().hex[:8]}")


def test_every_resource_lands_in_the_containers_own_cgroup(runv, make_bundle):
    resources = {"memory": {"limit": 96 << 20, "reservation": 16 << 20, "swap": 128 << 20},
                 "pids": {"limit": 40},
                 "cpu": {"shares": 512, "quota": 50000, "period": 200000, "cpus": "0", "mems": "0"},
                 "blockIO": {"weight": 100},
                 "unified": {"memory.high": str(80 << 20)}}
    result = run_with(runv, make_bundle, resources)
    assert result.returncode == 0, result.stderr
    got = values(result.stdout)
    # in its own cgroup namespace, rooted at its own cgroup: a non-root cgroup (the guest's root has no memory.max)
    assert got["cgroup"] == "0::/"
    assert set(got["cgroup.controllers"].split()) >= {"cpuset", "cpu", "io", "memory", "pids"}
    assert got["memory.max"] == str(96 << 20) and got["memory.low"] == str(16 << 20)
    assert got["memory.high"] == str(80 << 20)
    if "memory.swap.max" in got:  # the guest kernel accounts swap: memory+swap less memory, as runc
        assert got["memory.swap.max"] == str(32 << 20)
    assert got["pids.max"] == "40"
    assert got["cpu.max"] == "50000 200000" and got["cpu.weight"] == "59"  # runc's weight for 512 shares
    assert got["cpuset.cpus"] == "0" and got["cpuset.mems"] == "0"
    assert got["io.weight"] == "default 910"  # runc's io.weight for blkio weight 100


def test_no_resources_still_give_a_cgroup_of_its_own_without_limits(runv, make_bundle):
    result = run_with(runv, make_bundle, {})
    assert result.returncode == 0, result.stderr
    got = values(result.stdout)
    assert got["cgroup"] == "0::/" and got["memory.max"] == "max" and got["pids.max"] == "max"
    assert got["cpu.max"] == "max 100000" and got["cpu.weight"] == "100"


def test_exec_joins_the_containers_cgroup(runv, make_bundle, tmp_path):
    spec = default_config("echo started; exec sleep 300")
    spec["linux"]["resources"] = {"pids": {"limit": 20}}
    bundle = bundle_of(make_bundle, spec)
    with open(tmp_path / "out", "w") as out:
        assert runv("create", "--bundle", bundle, "cg-exec", stdout=out).returncode == 0
    assert runv("start", "cg-exec").returncode == 0
    result = runv("exec", "cg-exec", "sh", "-c", "cat /proc/self/cgroup; echo $$; cat /sys/fs/cgroup/cgroup.procs; "
                  "cat /sys/fs/cgroup/pids.max")
    assert result.returncode == 0, result.stderr
    cgroup, own, *procs, limit = result.stdout.split()
    # "0::/": the exec'd shell is at its cgroup namespace's root, the container's cgroup (elsewhere: "0::/../..")
    assert cgroup == "0::/" and limit == "20"
    assert "1" in procs and own in procs  # the container's PID 1 and the exec'd shell, in the same cgroup.procs
    runv("kill", "cg-exec", "KILL")


# a child shell forks sleeps until a fork fails (fatal to busybox sh); its parent, PID 1, then reads the count
FORKS = ("sh -c 'while :; do sleep 60 & echo x >> /dev/shm/started; done' 2>/dev/null; echo exit=$?; "
         "echo started=$(wc -l < /dev/shm/started); echo events=$(cat /sys/fs/cgroup/pids.events)")


def test_a_pids_limit_is_enforced_inside(runv, make_bundle):
    result = run_with(runv, make_bundle, {"pids": {"limit": 6}}, script=FORKS)
    assert result.returncode == 0, result.stderr
    # 6 = PID 1 + the child shell + 4 sleeps; the 5th fork failed (EAGAIN), which the kernel counts as a "max" event
    assert "exit=2\nstarted=4\n" in result.stdout, result.stdout
    assert int(result.stdout.split("events=max ")[1].split()[0]) >= 1, result.stdout


def test_io_max_on_the_containers_virtio_blk_disk(runv, make_bundle):
    overlay = {"io.runv.storage.mode": "overlay"}  # the ext4 upper disk is a virtio-blk device in the guest
    probe = run_with(runv, make_bundle, {}, script="cat /sys/block/vda/dev", name="probe", annotations=overlay)
    assert probe.returncode == 0, probe.stderr
    major, minor = map(int, probe.stdout.strip().split(":"))
    device = {"major": major, "minor": minor}
    resources = {"blockIO": {"throttleReadBpsDevice": [{**device, "rate": 1 << 20}],
                             "throttleWriteBpsDevice": [{**device, "rate": 2 << 20}],
                             "throttleReadIOPSDevice": [{**device, "rate": 100}],
                             "throttleWriteIOPSDevice": [{**device, "rate": 200}]}}
    result = run_with(runv, make_bundle, resources, annotations=overlay)
    assert result.returncode == 0, result.stderr
    assert values(result.stdout)["io.max"] == f"{major}:{minor} rbps=1048576 wbps=2097152 riops=100 wiops=200"


def test_hugetlb_where_the_guest_kernel_has_it(runv, make_bundle):
    probe = run_with(runv, make_bundle, {}, script="cat /sys/fs/cgroup/cgroup.controllers", name="probe")
    assert probe.returncode == 0, probe.stderr
    if "hugetlb" not in probe.stdout.split():
        pytest.skip(f"the guest kernel has no hugetlb controller ({probe.stdout.strip()})")
    result = run_with(runv, make_bundle, {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]})
    assert result.returncode == 0, result.stderr
    assert values(result.stdout)["hugetlb.2MB.max"] == str(4 << 20)


@pytest.mark.parametrize(("resources", "message"), [
    # refused on the host, before any VM boots
    ({"memory": {"limit": -2}}, "linux.resources.memory.limit: must be a number of bytes or -1, not -2"),
    ({"cpu": {"shares": 1024, "cpus": "zero"}}, "linux.resources.cpu.cpus: must be a list of numbers and ranges such as 0-2,4, not 'zero'"),
    ({"unified": {"../../cgroup.procs": "1"}}, "linux.resources.unified: '../../cgroup.procs' must be a cgroup file name"),
    # a CPU no VM here can have (the VM gets the CPUs its cpuset names, up to the host's: runv.vm.sizing)
    ({"cpu": {"cpus": "4095"}}, "linux.resources.cpu.cpus '4095' needs 4096 vCPUs, above the maximum "),
    # refused by the guest kernel: a file it does not know, a quota below its minimum
    ({"unified": {"memory.bogus": "1"}}, "linux.resources: cannot set memory.bogus to 1: the guest kernel has no memory.bogus"),
    ({"cpu": {"quota": 10, "period": 100000}}, "linux.resources: cannot set cpu.max to 10 100000: "),
])
def test_a_bad_value_fails_create_in_one_line_and_leaves_nothing(runv, make_bundle, root, resources, message):
    spec = default_config("true")
    spec["linux"]["resources"] = resources
    bundle = bundle_of(make_bundle, spec)
    result = runv("create", "--bundle", bundle, "bad-cgroup")
    assert result.returncode != 0 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (root / "bad-cgroup").exists()
    assert runv("list", "-q").stdout.strip() == ""

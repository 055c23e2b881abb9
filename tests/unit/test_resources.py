"""``linux.resources`` → the cgroup v2 files the guest writes (runv.oci.resources), checked
against runc's own numbers (opencontainers/cgroups utils_test.go, runc's fs2)."""

import pytest

from runv.api.errors import RunvError
from runv.oci.resources import cpu_weight, io_weight, parse_resources, swap_max


@pytest.mark.parametrize(("shares", "weight"), [
    (0, 0), (1, 1), (2, 1), (3, 2), (512, 59), (1024, 100), (2048, 174), (4096, 303), (100000, 4340),
    (262143, 10000), (262144, 10000), (1 << 20, 10000),
])
def test_cpu_shares_become_runcs_cpu_weight(shares, weight):
    assert cpu_weight(shares) == weight  # 1024 (v1's default) is 100 (v2's default)


@pytest.mark.parametrize(("blkio", "weight"), [(0, 0), (10, 1), (100, 910), (500, 4950), (1000, 10000)])
def test_blkio_weight_becomes_runcs_io_weight(blkio, weight):
    assert io_weight(blkio) == weight


@pytest.mark.parametrize(("swap", "memory", "expected"), [
    (0, 0, 0), (-1, 0, -1), (300, -1, 300), (-1, -1, -1), (0, -1, -1), (-1, 1000, -1), (1000, 1000, 0),
    (500, 200, 300),
])
def test_swap_is_memory_plus_swap_less_memory_as_in_runc(swap, memory, expected):
    assert swap_max(swap, memory) == expected


@pytest.mark.parametrize(("swap", "memory"), [(300, 400), (300, 0), (300, -300)])
def test_swap_runc_refuses_is_refused(swap, memory):
    assert isinstance(swap_max(swap, memory), str)


EVERYTHING = {
    "pids": {"limit": 64},
    "memory": {"limit": 128 << 20, "reservation": 32 << 20, "swap": 192 << 20, "swappiness": 10, "kernel": 1 << 20},
    "cpu": {"shares": 512, "quota": 50000, "period": 200000, "cpus": "0", "mems": "0", "realtimeRuntime": 5},
    "blockIO": {"weight": 500, "leafWeight": 300,
                "throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 1048576}],
                "throttleWriteBpsDevice": [{"major": 254, "minor": 0, "rate": 2097152}],
                "throttleReadIOPSDevice": [{"major": 254, "minor": 16, "rate": 100}],
                "throttleWriteIOPSDevice": [{"major": 254, "minor": 0, "rate": 200}]},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
    "rdma": {"mlx5_0": {"hcaHandles": 3, "hcaObjects": 1000}},
    "unified": {"memory.high": "100000000", "pids.max": "50"},
    "devices": [{"allow": False, "access": "rwm"}],
    "network": {"classID": 7},
}


def test_every_resource_becomes_runcs_files_in_runcs_order():
    files = parse_resources(EVERYTHING, "c")
    assert list(files.items()) == [
        ("memory.swap.max", str(64 << 20)), ("memory.max", str(128 << 20)), ("memory.low", str(32 << 20)),
        ("io.weight", "4950"),
        ("io.max", "254:0 rbps=1048576\n254:0 wbps=2097152\n254:16 riops=100\n254:0 wiops=200"),
        ("cpu.weight", "59"), ("cpu.max", "50000 200000"), ("cpuset.cpus", "0"), ("cpuset.mems", "0"),
        ("hugetlb.2MB.max", str(4 << 20)), ("rdma.max", "mlx5_0 hca_handle=3 hca_object=1000"),
        # unified last, over the typed pids.limit, as runc writes it last
        ("memory.high", "100000000"), ("pids.max", "50"),
    ]


@pytest.mark.parametrize(("resources", "files"), [
    ({}, {}),
    ({"memory": {"limit": 0}, "pids": {"limit": 0}}, {}),  # 0 is unset in runc
    ({"memory": {"limit": -1}}, {"memory.swap.max": "max", "memory.max": "max"}),  # unlimited memory: swap too
    ({"memory": {"limit": 1000, "swap": 1000}}, {"memory.swap.max": "0", "memory.max": "1000"}),  # no swap
    ({"memory": {"limit": 1000, "swap": -1}}, {"memory.swap.max": "max", "memory.max": "1000"}),
    ({"pids": {"limit": -1}}, {"pids.max": "max"}),
    ({"cpu": {"quota": -1}}, {"cpu.max": "max 100000"}),  # runc's default period
    ({"cpu": {"period": 50000}}, {"cpu.max": "max 50000"}),
    ({"cpu": {"quota": 20000, "burst": 1000, "idle": 0}}, {"cpu.idle": "0", "cpu.max": "20000 100000", "cpu.max.burst": "1000"}),
    ({"cpu": {"shares": 1024}}, {"cpu.weight": "100"}),
    ({"blockIO": {"weight": 0, "weightDevice": [{"major": 8, "minor": 0, "weight": 200}]}}, {}),  # BFQ only
    ({"unified": {"cgroup.max.descendants": "2"}}, {"cgroup.max.descendants": "2"}),
])
def test_what_is_written_for_each_case(resources, files):
    assert parse_resources(resources, "c") == files


@pytest.mark.parametrize(("resources", "message"), [
    ({"memory": {"limit": -2}}, "linux.resources.memory.limit: must be a number of bytes or -1, not -2"),
    ({"memory": {"limit": "1G"}}, "linux.resources.memory.limit: must be a number of bytes or -1, not '1G'"),
    ({"memory": {"reservation": True}}, "linux.resources.memory.reservation: must be a number of bytes or -1, not True"),
    ({"memory": {"limit": 100, "swap": 50}}, "linux.resources.memory.swap: memory+swap limit (50) should be >= memory limit (100)"),
    ({"memory": {"swap": 50}}, "linux.resources.memory.swap: unable to set swap limit without memory limit"),
    ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness: must be from 0 to 100, not 101"),
    ({"memory": 5}, "linux.resources.memory: must be an object"),
    ({"pids": {"limit": 1.5}}, "linux.resources.pids.limit: must be an integer, not 1.5"),
    ({"cpu": {"shares": -1}}, "linux.resources.cpu.shares: must be a non-negative integer, not -1"),
    ({"cpu": {"period": -5}}, "linux.resources.cpu.period: must be a non-negative number of microseconds, not -5"),
    ({"cpu": {"idle": 2}}, "linux.resources.cpu.idle: must be 0 or 1, not 2"),
    ({"cpu": {"cpus": "0-1,x"}}, "linux.resources.cpu.cpus: must be a list of numbers and ranges such as 0-2,4, not '0-1,x'"),
    ({"cpu": {"mems": 0}}, "linux.resources.cpu.mems: must be a string, not 0"),
    ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight: must be from 10 to 1000, not 5"),
    ({"blockIO": {"weight": 2000}}, "linux.resources.blockIO.weight: must be from 10 to 1000, not 2000"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
     "linux.resources.blockIO.throttleReadBpsDevice[0]: major, minor and rate must be non-negative integers, not {'major': 8, 'rate': 1}"),
    ({"blockIO": {"throttleWriteIOPSDevice": {"major": 8}}}, "linux.resources.blockIO.throttleWriteIOPSDevice: must be a list of objects"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "linux.resources.hugepageLimits[0].pageSize: must be a size such as 2MB or 1GB, not '2M'"),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]}, "linux.resources.hugepageLimits[0].limit: must be a non-negative number of bytes, not -1"),
    ({"rdma": {"mlx": {"hcaHandles": -1}}}, "linux.resources.rdma.mlx.hcaHandles: must be a non-negative integer, not -1"),
    ({"unified": {"../memory.max": "1"}}, "linux.resources.unified: '../memory.max' must be a cgroup file name such as memory.high"),
    ({"unified": {"memory": "1"}}, "linux.resources.unified: 'memory' must be a cgroup file name such as memory.high"),
    ({"unified": {"cgroup.procs": "1"}}, "linux.resources.unified: 'cgroup.procs' is the agent's to manage (it places the container's processes)"),
    ({"unified": {"memory.high": 5}}, "linux.resources.unified.memory.high: must be a string, not 5"),
    ([1], "linux.resources: must be an object"),
])
def test_a_bad_value_fails_in_one_line_naming_the_field_and_the_value(resources, message):
    with pytest.raises(RunvError) as error:
        parse_resources(resources, "config.json")
    assert str(error.value) == f"config.json: {message}"

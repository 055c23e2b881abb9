"""``runv update``'s arithmetic and the guest's side of it, without a VM: runc's flags as
``linux.resources`` fields, the merge over the current resources, and a guest cgroup whose
old values come back when a write is refused (tests/vm/test_vm_update.py runs it in a VM)."""

import pytest

from runv.agent.cgroups import update_cgroup
from runv.agent.errors import RequestError
from runv.api.errors import RunvError
from runv.oci.resources import from_update_flags, merged, parse_resources, ram_in_bytes


@pytest.mark.parametrize("text, size", [("1024", 1024), ("512m", 512 << 20), ("1G", 1 << 30), ("64MiB", 64 << 20),
                                        ("1.5k", 1536), ("-1", -1), ("2 g", 2 << 30)])
def test_sizes_read_as_runc_update_reads_them(text, size):
    assert ram_in_bytes(text) == size


def test_flags_become_the_fields_they_name():
    flags = {"memory": "512m", "memory-swap": "-1", "cpu-quota": "200000", "cpu-period": "100000", "cpu-share": "512",
             "cpuset-cpus": "0-1", "pids-limit": "64", "blkio-weight": "300"}
    assert from_update_flags(flags) == {
        "memory": {"limit": 512 << 20, "swap": -1},
        "cpu": {"quota": 200000, "period": 100000, "shares": 512, "cpus": "0-1"},
        "pids": {"limit": 64},
        "blockIO": {"weight": 300},
    }


@pytest.mark.parametrize("flags, message", [
    ({"memory": "lots"}, "invalid value for --memory: invalid size 'lots'"),
    ({"cpu-period": "-1"}, "invalid value for --cpu-period: '-1' is not a non-negative integer"),
    ({"pids-limit": "ten"}, "invalid value for --pids-limit: 'ten' is not an integer"),
])
def test_a_bad_flag_is_one_line_naming_it(flags, message):
    with pytest.raises(RunvError, match="^" + message):
        from_update_flags(flags)


def test_an_update_replaces_only_the_fields_it_gives():
    current = {"memory": {"limit": 256 << 20, "swap": 512 << 20}, "cpu": {"shares": 1024}, "devices": [{"allow": False}]}
    after = merged(current, {"memory": {"limit": 384 << 20}, "pids": {"limit": 10}, "cpu": {"quota": None}})
    assert after == {"memory": {"limit": 384 << 20, "swap": 512 << 20}, "cpu": {"shares": 1024},
                     "devices": [{"allow": False}], "pids": {"limit": 10}}
    assert current["memory"]["limit"] == 256 << 20  # the current resources are not changed in place
    assert parse_resources(after, "update")["memory.swap.max"] == str(128 << 20)  # swap follows the new limit


def test_an_update_that_breaks_a_rule_of_the_merged_resources_names_the_field():
    with pytest.raises(RunvError, match=r"linux\.resources\.memory\.swap.*should be >= memory limit"):
        parse_resources(merged({"memory": {"limit": 64 << 20, "swap": 128 << 20}}, {"memory": {"limit": 256 << 20}}), "update")
    with pytest.raises(RunvError, match="must be a JSON object"):
        merged({}, ["memory"])


def test_the_guest_writes_the_new_values(tmp_path):
    for name, value in {"memory.max": "max", "pids.max": "max", "cpu.max": "max 100000"}.items():
        (tmp_path / name).write_text(value + "\n")
    update_cgroup(str(tmp_path), {"memory.max": str(64 << 20), "pids.max": "30", "cpu.max": "50000 100000"})
    assert (tmp_path / "memory.max").read_text() == str(64 << 20)
    assert (tmp_path / "pids.max").read_text() == "30"


def test_a_refused_write_puts_the_old_values_back(tmp_path):
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "pids.max").write_text("40\n")
    with pytest.raises(RequestError, match="cannot set cpu.max to 1 2: the guest kernel has no cpu.max"):
        update_cgroup(str(tmp_path), {"memory.max": "1000", "pids.max": "5", "cpu.max": "1 2"})
    assert (tmp_path / "memory.max").read_text() == "max" and (tmp_path / "pids.max").read_text() == "40"


def test_a_guest_without_a_container_cgroup_says_so():
    with pytest.raises(RequestError, match="has no cgroup in the guest"):
        update_cgroup(None, {"pids.max": "5"})


def test_a_hypervisor_that_cannot_resize_refuses_a_bigger_vm_and_keeps_its_limits(fake, make_bundle, tmp_path):
    """The fake VMM has no hot-plug: what fits the VM's size goes to the agent, what needs
    more is one line naming the sizes; a stopped container is refused."""
    with open(tmp_path / "out", "w") as out:
        assert fake("run", "-d", "--bundle", make_bundle(["sleep", "100"]), "box", stdout=out).returncode == 0
    result = fake("update", "--memory", "2g", "box")
    assert result.returncode == 1
    assert result.stderr == ("runv: container box: the new limits need a VM of 2192 MiB and 1 vCPUs, and hypervisor 'fake' "
                             "cannot resize its VM of 256 MiB and 1 vCPUs: recreate the container with them\n")
    result = fake("update", "--pids-limit", "10", "box")  # fits: the agent off a VM has no cgroup to write
    assert result.returncode == 1 and "has no cgroup in the guest" in result.stderr
    assert fake("kill", "box", "KILL").returncode == 0

"""A container's VM size from its ``linux.resources`` (runv.vm.sizing): the memory limit
plus the guest's overhead, vCPUs from the quota or the cpuset, the ``[vm]`` table's
defaults and maxima, one-line errors; and a VM of another size never uses a template."""

from __future__ import annotations

from pathlib import Path

import pytest

from runv.api import RunvError
from runv.api.vm import VMSpec
from runv.oci.resources import parse_resources
from runv.templates import match
from runv.vm import sizing

MIB = 1 << 20
HOST = {"host_mib": 8192, "host_cpus": 4}


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Writes runv's config file (``config("[vm]\\n...")``) and returns the path."""
    path = tmp_path / "config.toml"
    monkeypatch.setenv("RUNV_CONFIG", str(path))

    def write(text: str = "") -> Path:
        path.write_text(text)
        return path

    return write


def size(resources: dict, **host) -> tuple[int, int]:
    return sizing.vm_size(parse_resources(resources, "config.json"), "config.json", sizing.settings(**(host or HOST)))


def test_no_limits_give_the_default_vm(config):
    config()
    assert size({}) == (256, 1)
    assert size({"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 100000, "shares": 512}}) == (256, 1)


def test_memory_is_the_limit_plus_the_guests_overhead_never_below_the_default(config):
    config()
    overhead = sizing.DEFAULTS["overhead_mib"]
    assert size({"memory": {"limit": 512 * MIB}}) == (512 + overhead + 8, 1)  # 8: the page map of 512 MiB
    assert size({"memory": {"limit": 512 * MIB + 1}}) == (513 + overhead + 9, 1)  # rounded up to whole MiB
    assert size({"memory": {"limit": 64 * MIB}}) == (256, 1)  # a small limit: the default VM
    assert size({"unified": {"memory.max": str(1024 * MIB)}}) == (1024 + overhead + 16, 1)  # unified wins, as in the guest


def test_vcpus_from_the_quota_or_the_cpuset(config):
    config()
    assert size({"cpu": {"quota": 200000, "period": 100000}})[1] == 2
    assert size({"cpu": {"quota": 150000, "period": 100000}})[1] == 2  # ceil
    assert size({"cpu": {"quota": 50000}})[1] == 1  # period defaults to 100000
    assert size({"cpu": {"cpus": "0-2"}})[1] == 3
    assert size({"cpu": {"cpus": "3"}})[1] == 4  # the guest's cgroup needs CPU 3 to exist
    assert size({"cpu": {"cpus": "0", "quota": 300000, "period": 100000}})[1] == 3  # the larger wins


def test_the_vm_table_sets_defaults_and_overhead(config):
    config("[vm]\nmemory_mib = 384\nvcpus = 2\noverhead_mib = 100\n")
    assert size({}) == (384, 2)
    assert size({"memory": {"limit": 512 * MIB}, "cpu": {"quota": 100000}}) == (620, 2)


def test_a_limit_above_the_maximum_fails_in_one_line_naming_field_value_and_maximum(config):
    path = config("[vm]\nmax_memory_mib = 1024\nmax_vcpus = 2\n")
    with pytest.raises(RunvError) as err:
        size({"memory": {"limit": 2048 * MIB}})
    text = str(err.value)
    assert text.startswith(f"config.json: linux.resources.memory.limit {2048 * MIB} needs a VM of ")
    assert "above the maximum 1024 MiB" in text and str(path) in text and "\n" not in text
    with pytest.raises(RunvError, match=r"linux.resources.cpu.quota 300000 / period 100000 needs 3 vCPUs, above the maximum 2 "):
        size({"cpu": {"quota": 300000, "period": 100000}})
    with pytest.raises(RunvError, match=r"linux.resources.cpu.cpus '0-7' needs 8 vCPUs, above the maximum 2 "):
        size({"cpu": {"cpus": "0-7"}})


def test_the_host_caps_the_maxima(config):
    config("[vm]\nmax_memory_mib = 1048576\nmax_vcpus = 64\n")
    with pytest.raises(RunvError, match="above the maximum 8192 MiB"):
        size({"memory": {"limit": 9000 * MIB}})
    with pytest.raises(RunvError, match="needs 5 vCPUs, above the maximum 4"):
        size({"cpu": {"quota": 500000, "period": 100000}})
    assert sizing.host_memory_mib() > 0


@pytest.mark.parametrize("table, message", [
    ("vcpus = 0", "[vm] vcpus must be a positive integer, not 0"),
    ("memory_mib = '1G'", "[vm] memory_mib must be a positive integer, not '1G'"),
    ("memory = 512", "[vm] has no setting 'memory'"),
    ("overhead_mib = -1", "[vm] overhead_mib must be a positive integer, not -1"),
])
def test_a_bad_vm_table_is_one_line(config, table, message):
    path = config(f"[vm]\n{table}\n")
    with pytest.raises(RunvError) as err:
        sizing.settings(**HOST)
    assert str(err.value).startswith(f"{path}: {message}")


# ---------------------------------------------------------------- templates match on size


class Shapes:
    """A hypervisor that can start any VM from a template: its own part of the shape is fixed."""

    @staticmethod
    def shape(vm):
        return {"machine": "q35"}


def vm(memory_mib: int, vcpus: int) -> VMSpec:
    state = Path("/run/runv/c1")
    return VMSpec(name="c1", state_dir=state, kernel=Path("/k"), initrd=Path("/i"), agent_socket=state / "agent.sock",
                  console_log=state / "console.log", memory_mib=memory_mib, vcpus=vcpus, kernel_args=("quiet",))


def test_a_vm_of_another_size_never_uses_a_template_of_the_default_size(config):
    config()
    files = {"path": "/k", "size": 1, "mtime_ns": 1}
    current = {"runv": "x", "kernel": files, "initrd": files}
    default = match.shape(vm(256, 1), "tcg", Shapes())
    record = {"name": "test", "shape": default, "source": current}
    assert match.select("auto", default, current, [record], Path("/nowhere"), "tcg") == (record, None)
    memory, vcpus = size({"memory": {"limit": 512 * MIB}, "cpu": {"quota": 200000, "period": 100000}})
    wanted = match.shape(vm(memory, vcpus), "tcg", Shapes())
    assert match.select("auto", wanted, current, [record], Path("/nowhere"), "tcg") == (None, None)
    chosen, warning = match.select("test", wanted, current, [record], Path("/nowhere"), "tcg")
    assert chosen is None and "made for another VM shape" in warning
    for other in (vm(memory, 1), vm(256, vcpus)):  # memory alone, vCPUs alone
        assert match.select("auto", match.shape(other, "tcg", Shapes()), current, [record], Path("/nowhere"), "tcg") == (None, None)

"""A container's VM size from its ``linux.resources``: the guest's memory and vCPUs.

The container's limits are applied inside the guest, to the container's own cgroup
(:mod:`runv.oci.resources` turns them into cgroup v2 files, the agent writes them); the VM
around it must be big enough for them to mean anything. So, from the files that parsing
gives (``memory.max``, ``cpu.max``, ``cpuset.cpus``, a ``unified`` value included):

- memory: the container's ``memory.max`` plus the guest's own needs, never below
  ``memory_mib``: ``overhead_mib`` (what the guest kernel keeps and the agent, its Python
  and the initramfs use) and the kernel's page map for the limit (64 bytes per 4 KiB page,
  1/64 of it), so the container can use all of its limit;
- vCPUs: ``ceil(quota / period)`` of ``cpu.max``, and at least one more than the highest
  CPU ``cpuset.cpus`` names (the guest's cgroup refuses a CPU the VM does not have),
  never below ``vcpus``.

Defaults and maxima come from the ``[vm]`` table of runv's config file
(``/etc/runv/config.toml`` or ``$RUNV_CONFIG``)::

    [vm]
    memory_mib = 256        # the smallest VM, and the size without a memory limit
    vcpus = 1               # the fewest vCPUs, and the count without a CPU quota or cpuset
    overhead_mib = 112      # guest memory on top of the container's limit (and its 1/64 page map)
    max_memory_mib = 65536  # the largest VM a container may ask for (default: the host's MemTotal)
    max_vcpus = 16          # (default: the host's CPU count)

A maximum is never above the host's: a VM larger than the host, or than the table allows,
fails ``create`` in one line naming the field, its value and the maximum.
"""

from __future__ import annotations

import math
import os
import re

from runv.api.config import config_path, section
from runv.api.errors import RunvError

MIB = 1 << 20
# Measured here (docs/resources.md): a 256 MiB guest has MemTotal 206 MiB (the kernel
# keeps 50 MiB) and MemAvailable 156 MiB with the agent and a container's shell running:
# 100 MiB are the guest's; 112 leaves a little room.
DEFAULTS = {"memory_mib": 256, "vcpus": 1, "overhead_mib": 112}
PAGE_MAP = 64  # the kernel's struct page: 64 bytes per 4 KiB page, 1/64 of the guest's RAM
KEYS = (*DEFAULTS, "max_memory_mib", "max_vcpus")
WHERE = "linux.resources"


def host_memory_mib(meminfo: str = "/proc/meminfo") -> int:
    """The host's MemTotal in MiB."""
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) >> 10
    raise RunvError(f"{meminfo} has no MemTotal line")


def settings(host_mib: int | None = None, host_cpus: int | None = None) -> dict[str, int]:
    """The ``[vm]`` table with its defaults, every value a positive integer, the maxima
    capped by the host's memory and CPUs."""
    table = section("vm")
    for key in table:
        if key not in KEYS:
            raise RunvError(f"{config_path()}: [vm] has no setting {key!r} (it has {', '.join(KEYS)})")
    host = {"max_memory_mib": host_mib if host_mib is not None else host_memory_mib(),
            "max_vcpus": host_cpus if host_cpus is not None else os.cpu_count() or 1}
    result = {**DEFAULTS, **host, **table}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "overhead_mib" else 1):
            raise RunvError(f"{config_path()}: [vm] {key} must be a positive integer, not {value!r}")
    for key, limit in host.items():
        result[key] = min(result[key], limit)
    return result


def _cpus(cpuset: str) -> int:
    """How many CPUs a VM needs for ``cpuset`` (``0-2,4``): one more than the highest named."""
    return 1 + max((int(n) for n in re.findall(r"\d+", cpuset)), default=-1)


def vm_size(files: dict[str, str], source: str, config: dict[str, int]) -> tuple[int, int]:
    """The memory (MiB) and vCPUs of the VM for a container whose cgroup gets ``files``
    (:func:`runv.oci.resources.parse_resources`); ``config`` is :func:`settings`. A size
    above its maximum fails in one line naming the field of ``source`` (config.json)."""
    memory_mib, vcpus = config["memory_mib"], config["vcpus"]
    limit = files.get("memory.max", "max")
    if limit.isdigit():
        limit_mib = -(-int(limit) // MIB)
        wanted = limit_mib + config["overhead_mib"] + -(-limit_mib // PAGE_MAP)
        if wanted > config["max_memory_mib"]:
            raise RunvError(f"{source}: {WHERE}.memory.limit {limit} needs a VM of {wanted} MiB (with the guest's "
                            f"overhead), above the maximum {config['max_memory_mib']} MiB (the "
                            f"host's MemTotal or [vm] max_memory_mib in {config_path()})")
        memory_mib = max(memory_mib, wanted)
    quota, _, period = files.get("cpu.max", "max").partition(" ")
    wanted = []
    if quota.isdigit() and int(quota) > 0:
        period = period if period.isdigit() and int(period) > 0 else "100000"
        wanted.append((math.ceil(int(quota) / int(period)), f"{WHERE}.cpu.quota {quota} / period {period}"))
    if _cpus(files.get("cpuset.cpus", "")):
        wanted.append((_cpus(files["cpuset.cpus"]), f"{WHERE}.cpu.cpus {files['cpuset.cpus']!r}"))
    for count, field in wanted:
        if count > config["max_vcpus"]:
            raise RunvError(f"{source}: {field} needs {count} vCPUs, above the maximum {config['max_vcpus']} (the "
                            f"host's CPU count or [vm] max_vcpus in {config_path()})")
    return memory_mib, max([vcpus] + [count for count, _ in wanted])

"""``linux.resources`` as the cgroup v2 files the guest writes for the container.

The translation is runc's (libcontainer/specconv and cgroups/fs2): the same files, values
and order — pids, memory, io, cpu, cpuset, hugetlb, rdma, then ``unified`` (which wins
over a typed field naming the same file). What the guest's cgroup v2 has no file for is
accepted and not applied, as runc accepts it on v2: ``memory.kernel``/``kernelTCP``/
``swappiness``/``disableOOMKiller``, ``cpu.realtime*``, ``blockIO.leafWeight`` and
``weightDevice`` (BFQ only; the guest has no BFQ), ``network``, and ``devices`` (eBPF in
v2; the container's ``/dev`` holds only what the spec lists). The result maps a file name
to its value; a value of several lines is written a line at a time (io.max, rdma.max).
"""

from __future__ import annotations

import math
import re
from typing import Any

from runv.api.errors import RunvError
from runv.oci.fields import field_error, is_int

WHERE = "linux.resources"
CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
PAGE_SIZE = re.compile(r"\d+[KMG]B")
# the cgroup's own membership and shape are the agent's to manage, not the spec's
AGENT_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.type")
THROTTLES = (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
             ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops"))


def cpu_weight(shares: int) -> int:
    """runc's ConvertCPUSharesToCgroupV2Value (opencontainers/cgroups, runc 1.4): a
    quadratic in log2(shares) through 2 → 1, 1024 → 100 (both defaults), 262144 → 10000;
    0 is unset. runc 1.1 used a straight line (1024 → 39), which moved the default."""
    if shares == 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    log = math.log2(shares)
    return math.ceil(10 ** ((log * log + 125 * log) / 612.0 - 7.0 / 34.0))


def io_weight(weight: int) -> int:
    """runc's ConvertBlkIOToIOWeightValue: blkio's 10..1000 onto io.weight's 1..10000."""
    return 0 if weight == 0 else 1 + (weight - 10) * 9999 // 990


def swap_max(swap: int, memory: int) -> int | str:
    """runc's ConvertMemorySwapToCgroupV2Value: the spec's swap is memory+swap, v2's
    memory.swap.max is swap alone. Returns the number (-1: max, 0: unset) or the error."""
    if memory == -1 and swap == 0:
        return -1  # unlimited memory and swap unset: both unlimited, as on cgroup v1
    if swap in (-1, 0) or memory == -1:
        return swap
    if memory == 0:
        return "unable to set swap limit without memory limit"
    if memory < 0:
        return f"invalid memory value: {memory}"
    if swap < memory:
        return f"memory+swap limit ({swap}) should be >= memory limit ({memory})"
    return swap - memory


class _Section:
    """One object under ``linux.resources``, whose fields fail with one line naming them."""

    def __init__(self, data: dict, key: str, source: str) -> None:
        self.where, self.source = f"{WHERE}.{key}", source
        self.data = data.get(key) or {}
        if not isinstance(self.data, dict):
            self.fail("", "must be an object")

    def fail(self, key: str, what: str):
        field_error(self.source, f"{self.where}.{key}" if key else self.where, what)

    def integer(self, key: str, low: int | None = None, high: int | None = None, what: str = "an integer") -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
            self.fail(key, f"must be {what}, not {value!r}")
        return value

    def byte_count(self, key: str) -> int:
        """A byte count as runc reads one: 0 unset, -1 unlimited."""
        value = self.integer(key, -1, what="a number of bytes or -1")
        return value or 0

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(key, f"must be a string, not {value!r}")
        return value or ""

    def objects(self, key: str) -> list:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, "must be a list of objects")
        return value


def _number(value: int) -> str:
    return "max" if value == -1 else str(value)


def _memory(section: _Section, files: dict) -> None:
    limit, reservation, swap = section.byte_count("limit"), section.byte_count("reservation"), section.byte_count("swap")
    section.integer("swappiness", 0, 100, "from 0 to 100")  # checked, not in v2 (as runc on v2)
    if not (limit or reservation or swap):
        return
    value = swap_max(swap, limit)
    if isinstance(value, str):
        section.fail("swap", value)
    if value or swap > 0:  # swap == limit: no swap at all, written as 0
        files["memory.swap.max"] = _number(value)
    if limit:
        files["memory.max"] = _number(limit)
    if reservation:
        files["memory.low"] = _number(reservation)


def _block_io(section: _Section, files: dict) -> None:
    for key in ("weight", "leafWeight"):  # 0 is unset; leafWeight is checked, not in v2 (as runc on v2)
        value = section.integer(key, 0, 1000, "from 10 to 1000")
        if value and value < 10:
            section.fail(key, f"must be from 10 to 1000, not {value!r}")
    weight = section.integer("weight")
    if weight:
        files["io.weight"] = str(io_weight(weight))
    lines = []
    for key, name in THROTTLES:
        for index, device in enumerate(section.objects(key)):
            numbers = [device.get(k) for k in ("major", "minor", "rate")]
            if not all(is_int(n) and n >= 0 for n in numbers):
                section.fail(f"{key}[{index}]", f"major, minor and rate must be non-negative integers, not {device!r}")
            lines.append(f"{numbers[0]}:{numbers[1]} {name}={numbers[2]}")
    for index, device in enumerate(section.objects("weightDevice")):  # BFQ's only: checked, not applied
        if not all(is_int(device.get(k)) and device[k] >= 0 for k in ("major", "minor")):
            section.fail(f"weightDevice[{index}]", f"major and minor must be non-negative integers, not {device!r}")
    if lines:
        files["io.max"] = "\n".join(lines)


def _cpu(section: _Section, files: dict) -> None:
    shares = section.integer("shares", 0, what="a non-negative integer")
    quota = section.integer("quota") or 0
    period = section.integer("period", 0, what="a non-negative number of microseconds") or 0
    burst = section.integer("burst", 0, what="a non-negative number of microseconds")
    idle = section.integer("idle", 0, 1, "0 or 1")
    section.integer("realtimeRuntime")  # checked, not in v2 (as runc on v2)
    section.integer("realtimePeriod", 0, what="a non-negative integer")
    if idle is not None:
        files["cpu.idle"] = str(idle)
    if shares:
        files["cpu.weight"] = str(cpu_weight(shares))
    if quota or period:
        files["cpu.max"] = f"{quota if quota > 0 else 'max'} {period or 100000}"
    if burst is not None:
        files["cpu.max.burst"] = str(burst)
    for key, name in (("cpus", "cpuset.cpus"), ("mems", "cpuset.mems")):
        value = section.text(key)
        if value and not CPU_LIST.fullmatch(value):
            section.fail(key, f"must be a list of numbers and ranges such as 0-2,4, not {value!r}")
        if value:
            files[name] = value


def _hugepages(data: dict, source: str, files: dict) -> None:
    limits = data.get("hugepageLimits") or []
    if not isinstance(limits, list):
        field_error(source, f"{WHERE}.hugepageLimits", "must be a list")
    for index, entry in enumerate(limits):
        where = f"{WHERE}.hugepageLimits[{index}]"
        size = entry.get("pageSize") if isinstance(entry, dict) else None
        if not isinstance(size, str) or not PAGE_SIZE.fullmatch(size):
            field_error(source, f"{where}.pageSize", f"must be a size such as 2MB or 1GB, not {size!r}")
        if not is_int(entry.get("limit")) or entry["limit"] < 0:
            field_error(source, f"{where}.limit", f"must be a non-negative number of bytes, not {entry.get('limit')!r}")
        files[f"hugetlb.{size}.max"] = str(entry["limit"])


def _rdma(data: dict, source: str, files: dict) -> None:
    devices = data.get("rdma") or {}
    if not isinstance(devices, dict):
        field_error(source, f"{WHERE}.rdma", "must map device names to limits")
    lines = []
    for name, limits in devices.items():
        where = f"{WHERE}.rdma.{name}"
        if not name or any(c.isspace() for c in name) or not isinstance(limits, dict):
            field_error(source, where, "must be a device name mapped to hcaHandles and hcaObjects")
        line = name
        for key, file_key in (("hcaHandles", "hca_handle"), ("hcaObjects", "hca_object")):
            value = limits.get(key)
            if value is not None:
                if not is_int(value) or not 0 <= value < 1 << 32:
                    field_error(source, f"{where}.{key}", f"must be a non-negative integer, not {value!r}")
                line += f" {file_key}={value}"
        lines.append(line)
    if lines:
        files["rdma.max"] = "\n".join(lines)


def _unified(data: dict, source: str, files: dict) -> None:
    unified = data.get("unified") or {}
    if not isinstance(unified, dict):
        field_error(source, f"{WHERE}.unified", "must map cgroup file names to strings")
    for key, value in unified.items():
        where = f"{WHERE}.unified"
        if not key or "/" in key or key in (".", "..") or not key.isprintable() or "." not in key.strip("."):
            field_error(source, where, f"{key!r} must be a cgroup file name such as memory.high")
        if key in AGENT_FILES:
            field_error(source, where, f"{key!r} is the agent's to manage (it places the container's processes)")
        if not isinstance(value, str) or "\0" in value:
            field_error(source, f"{where}.{key}", f"must be a string, not {value!r}")
        files.pop(key, None)  # written last, over a typed field's value, as runc writes unified last
        files[key] = value


def parse_resources(data: Any, source: str) -> dict:
    """The cgroup v2 files the guest writes, in runc's order, from ``linux.resources``."""
    if not data:
        return {}
    if not isinstance(data, dict):
        field_error(source, WHERE, "must be an object")
    files: dict[str, str] = {}
    pids = _Section(data, "pids", source).integer("limit")
    if pids:  # runc 1.1: 0 is unset, a negative number unlimited
        files["pids.max"] = str(pids) if pids > 0 else "max"
    _memory(_Section(data, "memory", source), files)
    _block_io(_Section(data, "blockIO", source), files)
    _cpu(_Section(data, "cpu", source), files)
    _hugepages(data, source, files)
    _rdma(data, source, files)
    _unified(data, source, files)
    return files


# ------------------------------------------------------------------ runv update

RAM = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)
# runc update's flags: flag -> (section, field, kind); sizes take 512m as runc's do
UPDATE_FLAGS = {
    "blkio-weight": ("blockIO", "weight", "uint"),
    "cpu-period": ("cpu", "period", "uint"),
    "cpu-quota": ("cpu", "quota", "int"),
    "cpu-share": ("cpu", "shares", "uint"),
    "cpu-rt-period": ("cpu", "realtimePeriod", "uint"),
    "cpu-rt-runtime": ("cpu", "realtimeRuntime", "int"),
    "cpuset-cpus": ("cpu", "cpus", "text"),
    "cpuset-mems": ("cpu", "mems", "text"),
    "memory": ("memory", "limit", "size"),
    "memory-reservation": ("memory", "reservation", "size"),
    "memory-swap": ("memory", "swap", "size"),
    "pids-limit": ("pids", "limit", "int"),
}


def ram_in_bytes(text: str) -> int:
    """A size as runc's update reads one (docker's RAMInBytes): 512m, 1g, 1024; -1 unlimited."""
    if text == "-1":
        return -1
    match = RAM.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r}: use bytes or a size such as 512m")
    power = " kmgtp".index((match.group(2) or " ").lower())
    return int(float(match.group(1)) * 1024**power)


def from_update_flags(values: dict[str, str]) -> dict:
    """``linux.resources`` fields from runc update's flags (``{flag: text}``, unset ones absent)."""
    update: dict[str, dict] = {}
    for flag, text in values.items():
        section, key, kind = UPDATE_FLAGS[flag]
        if kind == "size":
            try:
                value = ram_in_bytes(text)
            except ValueError as exc:
                raise RunvError(f"invalid value for --{flag}: {exc}") from None
        elif kind == "text":
            value = text
        else:
            value = int(text) if re.fullmatch(r"-?\d+", text.strip()) else None
            if value is None or kind == "uint" and value < 0:
                what = "a non-negative integer" if kind == "uint" else "an integer"
                raise RunvError(f"invalid value for --{flag}: {text!r} is not {what}")
        update.setdefault(section, {})[key] = value
    return update


def merged(current: dict, update: dict) -> dict:
    """The resources after ``update`` (runc update's ``-r`` JSON, or the flags'): a field it
    gives replaces the current one, the rest stay; sections that are not objects are replaced."""
    if not isinstance(update, dict):
        raise RunvError("the resources to update must be a JSON object such as {\"memory\": {\"limit\": 536870912}}")
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in (current or {}).items()}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key].update({k: v for k, v in value.items() if v is not None})
        elif value is not None:
            result[key] = value
    return result

"""``linux.resources`` as the cgroup v2 files the guest writes for the container."""

from typing import Any

from runv.oci.fields import field_error, is_int


def parse_resources(data: Any, source: str) -> dict:
    """What the guest's cgroup v2 applies: memory.max and pids.max (the rest is accepted)."""
    if not data:
        return {}
    if not isinstance(data, dict):
        field_error(source, "linux.resources", "must be an object")
    applied = {}
    memory = data.get("memory") or {}
    limit = memory.get("limit") if isinstance(memory, dict) else None
    if limit is not None:
        if not is_int(limit) or limit == 0 or limit < -1:
            field_error(source, "linux.resources.memory.limit", f"must be a positive number of bytes or -1, not {limit!r}")
        applied["memory.max"] = "max" if limit == -1 else str(limit)
    pids = data.get("pids") or {}
    limit = pids.get("limit") if isinstance(pids, dict) else None
    if limit is not None:
        if not is_int(limit):
            field_error(source, "linux.resources.pids.limit", f"must be an integer, not {limit!r}")
        applied["pids.max"] = "max" if limit <= 0 else str(limit)
    return applied

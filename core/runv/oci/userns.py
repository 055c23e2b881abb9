"""The ``user`` namespace of ``linux.namespaces`` and its ``linux.uidMappings``/``gidMappings``,
checked on the host before any VM boots, in runc's words where runc has them (libcontainer's
configs/validate and configs/config_linux.go); the guest agent writes the maps for the
container's process (core/runv/agent/confine.py)."""

from __future__ import annotations

from typing import Any

from runv.oci.fields import field_error, is_int

ID_LIMIT = (1 << 32) - 1  # IDs are 32-bit and (u32)-1 is no ID: a range must end below it
MAPPINGS = ("uidMappings", "gidMappings")


def parse_mappings(data: Any, source: str, where: str) -> list:
    """One mapping list as ``[{"containerID", "hostID", "size"}]``: integers, ranges within
    32 bits, no two ranges overlapping on either side (the kernel refuses those)."""
    if data is None:
        return []
    if not isinstance(data, list):
        field_error(source, where, "must be a list")
    mappings = []
    for index, entry in enumerate(data):
        name = f"{where}[{index}]"
        if not isinstance(entry, dict):
            field_error(source, name, "must be an object")
        mapping = {key: entry.get(key) for key in ("containerID", "hostID", "size")}
        for key, value in mapping.items():
            if not is_int(value) or value < 0:
                field_error(source, f"{name}.{key}", f"must be a non-negative integer, not {value!r}")
        if mapping["size"] == 0:
            field_error(source, f"{name}.size", "must be at least 1")
        for key in ("containerID", "hostID"):
            if mapping[key] + mapping["size"] > ID_LIMIT:
                field_error(source, name, f"{key} {mapping[key]} + size {mapping['size']} goes past the last ID "
                                          f"({ID_LIMIT - 1})")
        for other_index, other in enumerate(mappings):
            for key in ("containerID", "hostID"):
                if mapping[key] < other[key] + other["size"] and other[key] < mapping[key] + mapping["size"]:
                    field_error(source, name, f"{key} range {mapping[key]}-{mapping[key] + mapping['size'] - 1} "
                                              f"overlaps {where}[{other_index}]")
        mappings.append(mapping)
    return mappings


def maps(mappings: list, container_id: int) -> bool:
    return any(m["containerID"] <= container_id < m["containerID"] + m["size"] for m in mappings)


def parse_userns(linux: dict, source: str) -> dict | None:
    """``{"uidMappings", "gidMappings"}`` when ``linux.namespaces`` has ``user``, else None."""
    uid, gid = (parse_mappings(linux.get(key), source, f"linux.{key}") for key in MAPPINGS)
    namespaces = linux.get("namespaces") or []
    user = [ns for ns in namespaces if isinstance(ns, dict) and ns.get("type") == "user"]
    if not user:
        if uid or gid:
            field_error(source, f"linux.{MAPPINGS[0] if uid else MAPPINGS[1]}",
                        "user namespace mappings specified, but user namespace isn't enabled in the config")
        return None
    if user[0].get("path"):
        field_error(source, "linux.namespaces", f"joining the user namespace {user[0]['path']!r} is not "
                                                "supported: the container's namespaces are in its VM")
    if not uid and not gid:
        field_error(source, "linux.namespaces",
                    "user namespaces enabled, but no namespace path to join nor mappings to apply specified")
    for key, kind, mappings in (("uidMappings", "uid", uid), ("gidMappings", "gid", gid)):
        if not mappings:
            field_error(source, f"linux.{key}", f"user namespaces enabled, but no {kind} mappings found")
        if not maps(mappings, 0):
            field_error(source, f"linux.{key}", f"user namespaces enabled, but no mapping found for {kind} 0")
    return {"uidMappings": uid, "gidMappings": gid}

"""The confinement fields of config.json, checked on the host before any VM boots.

``process``: the five capability sets, ``rlimits``, ``noNewPrivileges``, ``oomScoreAdj``,
``user.umask``; ``linux``: ``maskedPaths``, ``readonlyPaths``, ``sysctl``,
``rootfsPropagation``, ``devices``, ``resources`` (memory, pids), the user namespace and its
mappings (runv.oci.userns). Each bad value fails with
one line naming the field and the value, in runc's words where runc has them
(``unknown capability "CAP_X"``, ``wrong rlimit value: RLIMIT_X``). The guest agent
applies what passes (core/runv/agent/confine.py, docs/confinement.md).
"""

from __future__ import annotations

from typing import Any

from runv.agent.tables import CAP_NUMBERS, CAP_SETS, RLIMIT_NUMBERS
from runv.oci.fields import field_error, is_int
from runv.oci.resources import parse_resources
from runv.oci.seccomp import ACTIONS, ARCHES, OPERATORS, known_syscall
from runv.oci.userns import parse_userns

PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable")
DEVICE_TYPES = ("c", "b", "u", "p")


def parse_capabilities(data: Any, source: str, where: str) -> dict | None:
    """The five sets as lists of names (``None``: the field is absent, nothing is dropped)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        field_error(source, where, "must be an object")
    sets = {}
    for key in CAP_SETS:
        names = data.get(key) or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            field_error(source, f"{where}.{key}", "must be a list of strings")
        for name in names:
            if name.upper() not in CAP_NUMBERS:
                field_error(source, f"{where}.{key}", f"unknown capability {name!r}".replace("'", '"'))
        sets[key] = [n.upper() for n in names]
    return sets


def parse_rlimits(data: Any, source: str, where: str) -> list:
    if data is None:
        return []
    if not isinstance(data, list):
        field_error(source, where, "must be a list")
    seen, limits = set(), []
    for index, entry in enumerate(data):
        name = f"{where}[{index}]"
        if not isinstance(entry, dict):
            field_error(source, name, "must be an object")
        kind = entry.get("type")
        if kind not in RLIMIT_NUMBERS:
            field_error(source, f"{name}.type", f"wrong rlimit value: {kind}")
        if kind in seen:
            field_error(source, f"{name}.type", f"duplicate rlimit {kind}")
        seen.add(kind)
        hard, soft = entry.get("hard"), entry.get("soft")
        if not (is_int(hard) and is_int(soft)) or hard < 0 or soft < 0:
            field_error(source, name, f"hard and soft of {kind} must be non-negative integers")
        if soft > hard:
            field_error(source, name, f"soft limit of {kind} ({soft}) is above its hard limit ({hard})")
        limits.append({"type": kind, "hard": hard, "soft": soft})
    return limits


def parse_process_security(data: dict, source: str, where: str) -> dict:
    """The process fields the agent applies beside args/env/cwd/user, in their OCI names."""
    fields: dict[str, Any] = {}
    caps = parse_capabilities(data.get("capabilities"), source, f"{where}.capabilities")
    if caps is not None:
        fields["capabilities"] = caps
    fields["rlimits"] = parse_rlimits(data.get("rlimits"), source, f"{where}.rlimits")
    nnp = data.get("noNewPrivileges", False)
    if not isinstance(nnp, bool):
        field_error(source, f"{where}.noNewPrivileges", f"must be true or false, not {nnp!r}")
    fields["noNewPrivileges"] = nnp
    oom = data.get("oomScoreAdj")
    if oom is not None:
        if not is_int(oom) or not -1000 <= oom <= 1000:
            field_error(source, f"{where}.oomScoreAdj", f"must be an integer from -1000 to 1000, not {oom!r}")
        fields["oomScoreAdj"] = oom
    user = data.get("user") or {}
    umask = user.get("umask") if isinstance(user, dict) else None
    if umask is not None:
        if not is_int(umask) or not 0 <= umask <= 0o777:
            field_error(source, f"{where}.user.umask", f"must be an integer from 0 to 511 (0777), not {umask!r}")
        fields["umask"] = umask
    for key in ("apparmorProfile", "selinuxLabel"):  # accepted; no LSM in the guest (runv features says so)
        if data.get(key) is not None and not isinstance(data[key], str):
            field_error(source, f"{where}.{key}", "must be a string")
    return fields


def _paths(linux: dict, key: str, source: str) -> list:
    values = linux.get(key) or []
    if not isinstance(values, list) or not all(isinstance(p, str) and p.startswith("/") for p in values):
        field_error(source, f"linux.{key}", "must be a list of absolute paths")
    return values


def parse_devices(data: Any, source: str) -> list:
    devices = []
    for index, entry in enumerate(data or []):
        name = f"linux.devices[{index}]"
        if not isinstance(entry, dict):
            field_error(source, name, "must be an object")
        path, kind = entry.get("path"), entry.get("type")
        if not isinstance(path, str) or not path.startswith("/dev/"):
            field_error(source, f"{name}.path", f"must be a path under /dev, not {path!r}")
        if kind not in DEVICE_TYPES:
            field_error(source, f"{name}.type", f"must be one of c, b, u, p, not {kind!r}")
        numbers = {k: entry.get(k, 0 if kind == "p" else None) for k in ("major", "minor")}
        if not all(is_int(v) and v >= 0 for v in numbers.values()):
            field_error(source, name, f"major and minor of {path} must be non-negative integers")
        mode = entry.get("fileMode", 0o666)
        if not is_int(mode) or not 0 <= mode <= 0o7777:
            field_error(source, f"{name}.fileMode", f"must be a permission mode, not {mode!r}")
        owner = {k: entry.get(k, 0) for k in ("uid", "gid")}
        if not all(is_int(v) and v >= 0 for v in owner.values()):
            field_error(source, name, f"uid and gid of {path} must be non-negative integers")
        devices.append({"path": path, "type": kind, **numbers, "fileMode": mode, **owner})
    return devices


def parse_seccomp(data: Any, source: str) -> dict | None:
    """``linux.seccomp`` checked: actions, architectures, operators, numbers, and syscall
    names against the host's libseccomp, which compiles it (runv.oci.seccomp) before the
    container's VM boots."""
    if data is None:
        return None
    where = "linux.seccomp"
    if not isinstance(data, dict):
        field_error(source, where, "must be an object")
    if data.get("defaultAction") not in ACTIONS:
        field_error(source, f"{where}.defaultAction", f"unknown action {data.get('defaultAction')!r}")
    if not _errno_ret(data.get("defaultErrnoRet")):
        field_error(source, f"{where}.defaultErrnoRet", f"must be an errno number, not {data.get('defaultErrnoRet')!r}")
    for arch in data.get("architectures") or []:
        if arch not in ARCHES:
            field_error(source, f"{where}.architectures", f"unsupported architecture {arch!r} (this guest is x86_64)")
    if data.get("listenerPath"):
        field_error(source, f"{where}.listenerPath", "SCMP_ACT_NOTIFY is not supported in the guest")
    for index, rule in enumerate(data.get("syscalls") or []):
        name = f"{where}.syscalls[{index}]"
        if not isinstance(rule, dict):
            field_error(source, name, "must be an object")
        if rule.get("action") not in ACTIONS:
            field_error(source, f"{name}.action", f"unknown action {rule.get('action')!r}")
        if not _errno_ret(rule.get("errnoRet")):
            field_error(source, f"{name}.errnoRet", f"must be an errno number, not {rule.get('errnoRet')!r}")
        names = rule.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            field_error(source, f"{name}.names", "must be a list of strings")
        for syscall in names:
            if not known_syscall(syscall):
                field_error(source, f"{name}.names", f"unknown syscall {syscall!r}")
        for arg in rule.get("args") or []:
            if (not isinstance(arg, dict) or arg.get("op") not in OPERATORS or not is_int(arg.get("index"))
                    or not 0 <= arg["index"] <= 5 or not all(_u64(arg.get(key, 0)) for key in ("value", "valueTwo"))):
                field_error(source, f"{name}.args", f"bad argument comparison {arg!r}")
    return data


def _errno_ret(value: Any) -> bool:
    return value is None or (is_int(value) and 0 <= value <= 0xFFFF)


def _u64(value: Any) -> bool:
    return is_int(value) and 0 <= value < 1 << 64


def parse_linux(linux: dict, source: str) -> dict:
    """The ``linux`` fields the agent's ``prepare`` applies, in their OCI names."""
    sysctl = linux.get("sysctl") or {}
    if not isinstance(sysctl, dict) or not all(isinstance(v, str) for v in sysctl.values()):
        field_error(source, "linux.sysctl", "must map sysctl names to strings")
    for key in sysctl:
        if not key or "/" in key or ".." in key or key.startswith("."):
            field_error(source, "linux.sysctl", f"invalid sysctl name {key!r}")
        if key.startswith("net."):
            continue  # the VM's network is the container's: allowed as runc allows it with a netns
        if not (key.startswith(("kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.")) or key == "kernel.domainname"
                or key == "kernel.hostname"):
            field_error(source, "linux.sysctl", f"sysctl {key!r} is not allowed in the container's namespaces")
    propagation = linux.get("rootfsPropagation") or "rprivate"
    if propagation not in PROPAGATIONS:
        field_error(source, "linux.rootfsPropagation", f"unknown propagation {propagation!r}")
    return {
        "maskedPaths": _paths(linux, "maskedPaths", source),
        "readonlyPaths": _paths(linux, "readonlyPaths", source),
        "sysctl": sysctl,
        "rootfsPropagation": propagation,
        "devices": parse_devices(linux.get("devices"), source),
        "resources": parse_resources(linux.get("resources"), source),
        "seccomp": parse_seccomp(linux.get("seccomp"), source),
        "userns": parse_userns(linux, source),
    }

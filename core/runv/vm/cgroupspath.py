"""``linux.cgroupsPath`` on the host: the caller's cgroup for the container, which holds its
shim and its VMM's own cgroup (:mod:`runv.api.vmmcgroup`), as runc puts the container there.

When the spec has a ``linux.cgroupsPath`` (:func:`parse_path`), the shim goes to
``…/PATH/NAME.shim`` in every hierarchy (cgroup v2 allows no process in a cgroup whose
children have controllers; the VMM and its helpers, its children, start there) and the
VMM's memory and pids cgroup to ``…/PATH/NAME`` (:func:`place`), so the caller's limits
and accounting on PATH and above cover all of them, and the container's CPU and pids
limits are written at PATH as runc writes them (:mod:`runv.vm.hostlimits`). Where they are is recorded in the
state directory (``cgroup.json``), for the VMM plugin and the teardown (:func:`release`).
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

from runv.api.errors import RunvError
from runv.api.vmmcgroup import BASE, ENABLE, GONE_TIMEOUT, RECORD, Cgroup, for_vm, hierarchies, name, placement, write_file

SHIM = ".shim"  # the shim's leaf under the cgroupsPath: NAME.shim
SELF = "/proc/self/cgroup"


def to_root(pid: int, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Moves ``pid`` to the root cgroup of every cgroup hierarchy mounted here (v2's, each
    v1 controller's, v1's named ones): out of a container's cgroups, for work that is runv's
    own (a template made in the background)."""
    with open(mountinfo) as f:
        roots = {fields[4] for fields in (line.split() for line in f)
                 if fields[3] == "/" and fields[fields.index("-") + 1] in ("cgroup", "cgroup2")}
    for root in sorted(roots):
        write_file(Path(root) / "cgroup.procs", str(pid))


def expand_slice(unit: str, where: str) -> str:
    """A systemd slice as its path, as runc and systemd expand it: ``a-b.slice`` ->
    ``a.slice/a-b.slice``, ``-.slice`` -> the root."""
    stem = unit.removesuffix(".slice")
    if not unit.endswith(".slice") or not stem or "/" in unit:
        raise RunvError(f"{where}: {unit!r} is not a systemd slice name such as machine.slice")
    if stem == "-":
        return ""
    parts = stem.split("-")
    if "" in parts:
        raise RunvError(f"{where}: slice {unit!r} has an empty component (a leading, trailing or double '-')")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def parse_path(value: str, source: str) -> str:
    """``linux.cgroupsPath`` as a path below each hierarchy's root (no leading ``/``), or,
    relative (runc: below the runtime's own cgroup), with a leading ``./``; ``""`` when
    there is none. systemd's ``slice:prefix:name`` (what callers pass with
    ``--systemd-cgroup``) is expanded as runc expands it: ``SLICE-PATH/prefix-name.scope``
    (a ``name`` ending in ``.slice`` is used as it is); there is no systemd to ask, so the
    directories are made directly. One line naming the field on a bad value."""
    where = f"{source}: linux.cgroupsPath {value!r}"
    if not value:
        return ""
    if "/" not in value and ":" in value:
        parts = value.split(":")
        if len(parts) != 3 or not parts[2]:
            raise RunvError(f"{where}: a systemd cgroupsPath is slice:prefix:name (such as machine.slice:libpod:ID)")
        unit_slice, prefix, unit = parts
        unit = unit if unit.endswith(".slice") else f"{prefix}-{unit}.scope"
        return posixpath.join(expand_slice(unit_slice or "system.slice", where), unit)
    parts = value.split("/")
    if ".." in parts or "\0" in value:
        raise RunvError(f"{where}: a cgroupsPath may not climb with '..'; give a path such as /machine/ID")
    clean = posixpath.normpath(value)
    return clean.lstrip("/") if value.startswith("/") else "./" + clean


def _own(controller: str, proc: str) -> str:
    """This process's cgroup in the hierarchy of ``controller`` (``""``: v2's), from /proc."""
    with open(proc) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(",") if controller else controllers == "":
                return path.lstrip("/")
    raise RunvError(f"{proc} names no cgroup {controller or 'v2'} hierarchy")


def all_hierarchies(base: Path) -> list[tuple[str, Path]]:
    """Every hierarchy a container's processes join, as runc's: v2's one, or each v1
    hierarchy mounted under ``base`` (memory and pids first, which the VMM's limits need;
    ``cpu,cpuacct`` as ``cpu``, the named ``systemd`` one as ``name=systemd``; not the
    hybrid's controller-less ``unified``)."""
    needed = hierarchies(base)
    if needed[0][0] == "":
        return needed
    others = sorted(entry for entry in base.iterdir() if entry.is_dir() and not entry.is_symlink()
                    and entry.name not in ("unified", *(c for c, _ in needed))) if base.is_dir() else []
    return needed + [("name=systemd" if e.name == "systemd" else e.name.split(",")[0], e) for e in others]


def resolve(path: str, base: Path = BASE, proc: str = SELF) -> list[Path]:
    """The directory of a parsed cgroupsPath (:func:`parse_path`) in each hierarchy
    (:func:`all_hierarchies`)."""
    found = []
    for controller, root in all_hierarchies(Path(base)):
        if not root.is_dir():
            raise RunvError(f"no cgroup v1 {controller} hierarchy at {root} (and no cgroup v2 at {base}): mount it, "
                            f"the cgroupsPath needs it")
        found.append(root / posixpath.normpath(posixpath.join(_own(controller, proc), path)) if path.startswith("./")
                     else root / path)
    return found


def _enable(base: Path) -> str:
    """v2's ``cgroup.subtree_control`` on the way down: the VMM's controllers, and the
    CPU ones the container's limits go to where the host has them."""
    have = (base / "cgroup.controllers").read_text().split()
    return " ".join([ENABLE] + [f"+{c}" for c in ("cpu", "cpuset") if c in have])


def place(state_dir: Path | str, path: str, shim_pid: int, base: Path = BASE, proc: str = SELF,
          resources: dict | None = None, vcpus: int = 1) -> None:
    """Makes the cgroupsPath ``path`` (:func:`parse_path`) where it is missing in every
    hierarchy, records it in ``state_dir`` (before making anything, so :func:`release`
    finds all of it), writes the container's CPU and pids limits (its ``resources``, a VM
    of ``vcpus``: :func:`runv.vm.hostlimits.files`) there and moves ``shim_pid`` into its ``NAME.shim`` leaf;
    the VMM's cgroup goes there too (:func:`for_vm`). v2: memory, pids (and cpu, cpuset)
    are enabled in the subtree controls on the way down; v1: a new cpuset takes its
    parent's CPUs. RunvError naming the file on failure (the teardown removes what was made)."""
    from runv.vm import hostlimits

    base = Path(base)
    found = all_hierarchies(base)
    dirs = resolve(path, base, proc)
    v2 = (base / "cgroup.controllers").exists()
    enable = _enable(base) if v2 else ""
    limits = hostlimits.files(resources or {}, vcpus, v2)
    # each hierarchy's root, then every level down to the cgroupsPath's directory
    levels = [[p for p in reversed([d, *d.parents]) if p.is_relative_to(root)] for (_, root), d in zip(found, dirs)]
    made = [p for chain in levels for p in chain[1:] if not p.exists()]
    (Path(state_dir) / RECORD).write_text(json.dumps({  # "dirs": the VMM's hierarchies, which come first
        "base": str(base), "dirs": [str(d) for d in dirs[:len(hierarchies(base))]],
        "all": [str(d) for d in dirs], "made": [str(d) for d in made]}))
    try:
        for (controller, _), chain in zip(found, levels):
            for level in chain:
                level.mkdir(exist_ok=True)
                if v2:
                    write_file(level / "cgroup.subtree_control", enable)
                elif controller == "cpuset" and level != chain[0]:
                    hostlimits.inherit_cpuset(level)
            hostlimits.write(chain[-1], limits.get(controller, {}))
            shim = chain[-1] / (name(state_dir) + SHIM)
            shim.mkdir(exist_ok=True)
            if controller == "cpuset":
                hostlimits.inherit_cpuset(shim)
            write_file(shim / "cgroup.procs", str(shim_pid))
    except OSError as exc:
        raise RunvError(f"cannot make the cgroupsPath {path!r} under {base}: {exc.strerror} ({exc.filename})") from None


def update(state_dir: Path | str, resources: dict, vcpus: int) -> None:
    """``runv update``: the container's new CPU and pids limits written where :func:`place`
    put it; nothing when it has no cgroupsPath. A v1 child cpuset may hold no CPU its
    parent lacks, so the shim's leaf follows its parent in the order that allows."""
    from runv.vm import hostlimits

    placed = placement(state_dir)
    if placed is None:
        return
    base = Path(placed["base"])
    limits = hostlimits.files(resources, vcpus, (base / "cgroup.controllers").exists())
    for (controller, _), directory in zip(all_hierarchies(base), map(Path, placed.get("all", placed["dirs"]))):
        values = limits.get(controller, {})
        if not values:
            continue
        leaf = directory / (name(state_dir) + SHIM)
        cpuset = {k: v for k, v in values.items() if k.startswith("cpuset.")} if controller == "cpuset" else {}
        if cpuset and leaf.is_dir():
            try:
                hostlimits.write(directory, values)
            except RunvError:
                hostlimits.write(leaf, cpuset)
                hostlimits.write(directory, values)
            else:
                hostlimits.write(leaf, cpuset)
        else:
            hostlimits.write(directory, values)


def release(state_dir: Path | str, timeout: float = GONE_TIMEOUT) -> None:
    """Removes the VM's cgroup and, once the shim is gone from it (``delete``, or
    ``create`` after a failed boot: not the shim's own teardown), the shim's leaf and the
    cgroupsPath directories :func:`place` made, those that are empty; the caller's own stay.
    Converges when there is nothing there."""
    for_vm(state_dir).remove(timeout)
    placed = placement(state_dir)
    if placed is None:
        return
    shim = Cgroup(name(state_dir) + SHIM, Path(placed["base"]), placed.get("all", placed["dirs"]))
    if os.getpid() in shim.members():
        return  # the shim's own teardown: delete removes the leaf the shim is in
    shim.remove(timeout)
    for directory in reversed(placed["made"]):
        try:
            Path(directory).rmdir()
        except OSError:
            pass  # not empty (the caller's, or another container's) or gone already

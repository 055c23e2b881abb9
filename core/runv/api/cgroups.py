"""A VMM's own cgroup on the host: memory and pids limits sized from its VM, and a kill that
reaches every process left in it, whatever the container's state record says; and the
caller's ``linux.cgroupsPath``, which holds the VMM's cgroup and the shim.

The cgroup's name comes from the container's state directory alone (:func:`name`: the
directory's name plus a hash of its real path, so two ``--root`` trees never collide), so
the one teardown finds it without the record. Layouts:

- cgroup v2 (``/sys/fs/cgroup/cgroup.controllers`` exists): ``/sys/fs/cgroup/runv/NAME``,
  with ``memory`` and ``pids`` enabled in the subtree controls on the way;
- cgroup v1 (separate hierarchies, as on this project's CI host):
  ``/sys/fs/cgroup/memory/runv/NAME`` and ``/sys/fs/cgroup/pids/runv/NAME``.

When the spec has a ``linux.cgroupsPath`` (:func:`parse_path`), ``runv`` is replaced by
that path (``…/PATH/NAME``) and the shim goes to ``…/PATH/NAME.shim`` (cgroup v2 allows no
process in a cgroup whose children have controllers), so the caller's limits and
accounting on PATH and above cover the VMM and the shim (:func:`place`). Where they are is
recorded in the state directory (``cgroup.json``), for the teardown (:func:`release`).

The VMM enters its cgroup itself before it execs (the jail writes its pid to each
``cgroup.procs``, :mod:`runv.api.jail`), so nothing it starts is ever outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
from pathlib import Path

from runv.api.errors import RunvError
from runv.api.process import kill_until_gone

BASE = Path("/sys/fs/cgroup")
PARENT = "runv"
CONTROLLERS = ("memory", "pids")
ENABLE = " ".join(f"+{c}" for c in CONTROLLERS)  # v2's cgroup.subtree_control on the way down
# What a VMM needs beyond the guest's RAM: its code and libraries and device state. TCG's
# translated code comes on top (``code_cache_mib``: QEMU maps up to 1 GiB for it unless its
# command line bounds it, and touches it as the guest runs new code). Measured here: a 256
# MiB guest's cgroup peaked at 240 MiB through boot, `ls -R /` and a 50 MB write; the
# devicemapper helper VM (Python and LVM tools in the guest) reached 520 MiB anonymous with
# QEMU's default code cache, and was killed at guest + 256 MiB.
OVERHEAD_MIB = 256
# Tasks a VMM may have: QEMU's thread pool grows to 64 workers (9p, block I/O), plus one
# thread per vCPU and a handful of its own; a VMM may not fork (spawn=deny), so no more.
PIDS_BASE = 128
GONE_TIMEOUT = 5.0  # seconds for the processes of a cgroup to die once killed
RECORD = "cgroup.json"  # in the state directory: where the cgroupsPath put the VMM and the shim
SHIM = ".shim"  # the shim's leaf under the cgroupsPath: NAME.shim
SELF = "/proc/self/cgroup"


def name(state_dir: Path | str) -> str:
    """The cgroup name of the VM whose state directory is ``state_dir`` (deterministic)."""
    real = os.path.realpath(state_dir)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.basename(real))[:64].lstrip(".") or "vm"
    return f"{readable}-{digest}"


def limits(memory_mib: int, vcpus: int, code_cache_mib: int = 0) -> tuple[int, int]:
    """The memory limit (bytes) and pids limit of a VMM running a guest of this size (with a
    translated-code cache of ``code_cache_mib`` under an emulator such as TCG)."""
    return (memory_mib + OVERHEAD_MIB + code_cache_mib) << 20, PIDS_BASE + 2 * vcpus


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise RunvError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def hierarchies(base: Path) -> list[tuple[str, Path]]:
    """The (controller, root) of each hierarchy runv uses: v2's one (controller ``""``), or
    v1's memory and pids."""
    if (base / "cgroup.controllers").exists():
        return [("", base)]
    return [(controller, base / controller) for controller in CONTROLLERS]


def to_root(pid: int, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Moves ``pid`` to the root cgroup of every cgroup hierarchy mounted here (v2's, each
    v1 controller's, v1's named ones): out of a container's cgroups, for work that is runv's
    own (a template made in the background)."""
    with open(mountinfo) as f:
        roots = {fields[4] for fields in (line.split() for line in f)
                 if fields[3] == "/" and fields[fields.index("-") + 1] in ("cgroup", "cgroup2")}
    for root in sorted(roots):
        _write(Path(root) / "cgroup.procs", str(pid))


class Cgroup:
    """The cgroup ``name`` under ``base`` (a cgroupfs mount point; tests give a fake tree),
    in the shared ``runv`` parent, or in ``parents`` (a cgroupsPath's directory per hierarchy)."""

    def __init__(self, cgroup_name: str, base: Path = BASE, parents: list[Path] | None = None) -> None:
        self.name = cgroup_name
        self.base = Path(base)
        self.v2 = (self.base / "cgroup.controllers").exists()
        self.shared = parents is None  # in runv's own parent, removed with its last cgroup
        self._parents = None if parents is None else [Path(p) for p in parents]

    def parents(self) -> list[Path]:
        """The directories the cgroup lives in (one, or one per v1 controller): ``runv``'s
        or the cgroupsPath's."""
        if self._parents is not None:
            return self._parents
        return [root / PARENT for _, root in hierarchies(self.base)]

    def record(self) -> dict:
        """What finds the cgroup again (a VM record's ``cgroup``): :func:`from_record`."""
        return {"name": self.name, "base": str(self.base), "parents": None if self.shared else [str(p) for p in self._parents]}

    def dirs(self) -> list[Path]:
        """The cgroup's directories: one (v2) or one per controller (v1: memory, pids)."""
        return [parent / self.name for parent in self.parents()]

    def procs(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to enter the cgroup."""
        return [str(d / "cgroup.procs") for d in self.dirs()]

    def create(self, memory_bytes: int, pids: int) -> None:
        """Makes the cgroup with its limits; raises RunvError (naming the file) and leaves
        nothing when it cannot."""
        self._check()
        try:
            for attempt in range(3):  # another container's teardown may remove the shared parent meanwhile
                try:
                    self._make()
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            self.set_limits(memory_bytes, pids)
        except (OSError, RunvError) as exc:
            self.remove()
            if isinstance(exc, RunvError):
                raise
            raise RunvError(f"cannot make the VMM's cgroup {self.name} under {self.base}: {exc.strerror}") from None

    def set_limits(self, memory_bytes: int, pids: int) -> None:
        """The memory (and memory+swap: no swapping past it) and pids limits, at creation and
        when the VM is resized; v1's memsw limit is never below the memory limit meanwhile."""
        memory, pid_dir = (self.dirs()[0], self.dirs()[0]) if self.v2 else self.dirs()
        if self.v2:
            _write(memory / "memory.max", str(memory_bytes))
            if (memory / "memory.swap.max").exists():
                _write(memory / "memory.swap.max", "0")
        else:
            files = ["memory.limit_in_bytes"] + ["memory.memsw.limit_in_bytes"] * (memory / "memory.memsw.limit_in_bytes").exists()
            try:
                current = int((memory / files[0]).read_text())
            except (OSError, ValueError):
                current = 0
            for file in files if memory_bytes <= current else reversed(files):  # lowering: the limit first
                _write(memory / file, str(memory_bytes))
        _write(pid_dir / "pids.max", str(pids))

    def _check(self) -> None:
        if self.v2:
            have = (self.base / "cgroup.controllers").read_text().split()
            missing = [c for c in CONTROLLERS if c not in have]
            if missing:
                raise RunvError(f"cgroup v2 at {self.base} lacks the {', '.join(missing)} controller(s) a VMM's limits need")
            return
        for controller in CONTROLLERS:
            if not (self.base / controller).is_dir():
                raise RunvError(f"no cgroup v1 {controller} hierarchy at {self.base / controller} (and no cgroup v2 "
                                f"at {self.base}): mount it, the VMM's limits need it")

    def _make(self) -> None:
        if self.v2 and self.shared:
            _write(self.base / "cgroup.subtree_control", ENABLE)
            (self.base / PARENT).mkdir(exist_ok=True)
            _write(self.base / PARENT / "cgroup.subtree_control", ENABLE)
        for directory in self.dirs():  # a parent is not remade here: v2's must carry the subtree controls
            directory.mkdir(parents=self.shared and not self.v2, exist_ok=True)

    def members(self) -> set[int]:
        """The pids in the cgroup (in any of its directories)."""
        found = set()
        for directory in self.dirs():
            try:
                found.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill(self, timeout: float = GONE_TIMEOUT) -> None:
        """SIGKILLs every process in the cgroup until none is left (``cgroup.kill`` where
        v2 has it); raises RunvError naming those that survive ``timeout``."""
        kill_file = self.dirs()[0] / "cgroup.kill"
        kill = (lambda _: _write(kill_file, "1")) if self.v2 and kill_file.exists() else None
        kill_until_gone(self.members, f"cgroup {self.name}", timeout, kill)

    def remove(self, timeout: float = GONE_TIMEOUT) -> None:
        """Kills what is left in the cgroup and removes it (and the shared ``runv`` parent
        when that is empty); converges when there is nothing there."""
        self.kill(timeout)
        deadline = time.monotonic() + timeout
        for directory in self.dirs():
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY: the killed are not quite gone yet
                    if time.monotonic() > deadline:
                        raise RunvError(f"cannot remove cgroup {directory}: {exc.strerror}") from None
                    time.sleep(0.02)
        if self.shared:
            for parent in self.parents():
                try:
                    parent.rmdir()
                except OSError:
                    pass  # not empty (another VM's) or already gone


def from_record(data: dict | str) -> Cgroup:
    """The cgroup a VM record names (:meth:`Cgroup.record`; a bare name: runv's parent)."""
    if isinstance(data, str):  # records of VMs started before cgroupsPath was honoured
        return Cgroup(data)
    return Cgroup(data["name"], Path(data["base"]), data["parents"])


def _placement(state_dir: Path | str) -> dict | None:
    try:
        return json.loads((Path(state_dir) / RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunvError(f"cannot read {Path(state_dir) / RECORD}: {exc}") from None


def for_vm(state_dir: Path | str, base: Path = BASE) -> Cgroup:
    """The cgroup of the VM whose state directory is ``state_dir``: under its cgroupsPath
    when :func:`place` put it there, else in runv's parent."""
    placed = _placement(state_dir)
    if placed is None:
        return Cgroup(name(state_dir), base)
    return Cgroup(name(state_dir), Path(placed["base"]), placed["dirs"])


# ---------------------------------------------------------------- linux.cgroupsPath


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


def resolve(path: str, base: Path = BASE, proc: str = SELF) -> list[Path]:
    """The directory of a parsed cgroupsPath (:func:`parse_path`) in each hierarchy."""
    found = []
    for controller, root in hierarchies(Path(base)):
        if not root.is_dir():
            raise RunvError(f"no cgroup v1 {controller} hierarchy at {root} (and no cgroup v2 at {base}): mount it, "
                            f"the cgroupsPath needs it")
        found.append(root / posixpath.normpath(posixpath.join(_own(controller, proc), path)) if path.startswith("./")
                     else root / path)
    return found


def place(state_dir: Path | str, path: str, shim_pid: int, base: Path = BASE, proc: str = SELF) -> None:
    """Makes the cgroupsPath ``path`` (:func:`parse_path`) where it is missing, records it
    in ``state_dir`` (before making anything, so :func:`release` finds all of it) and moves
    ``shim_pid`` into its ``NAME.shim`` leaf; the VMM's cgroup goes there too
    (:func:`for_vm`). v2: memory and pids are enabled in the subtree controls on the way
    down. RunvError naming the file on failure (the teardown removes what was made)."""
    base = Path(base)
    dirs = resolve(path, base, proc)
    v2 = (base / "cgroup.controllers").exists()
    # each hierarchy's root, then every level down to the cgroupsPath's directory
    levels = [[p for p in reversed([d, *d.parents]) if p.is_relative_to(root)] for (_, root), d in zip(hierarchies(base), dirs)]
    made = [p for chain in levels for p in chain[1:] if not p.exists()]
    (Path(state_dir) / RECORD).write_text(json.dumps({"base": str(base), "dirs": [str(d) for d in dirs],
                                                      "made": [str(d) for d in made]}))
    try:
        for chain in levels:
            for level in chain:
                level.mkdir(exist_ok=True)
                if v2:
                    _write(level / "cgroup.subtree_control", ENABLE)
            shim = chain[-1] / (name(state_dir) + SHIM)
            shim.mkdir(exist_ok=True)
            _write(shim / "cgroup.procs", str(shim_pid))
    except OSError as exc:
        raise RunvError(f"cannot make the cgroupsPath {path!r} under {base}: {exc.strerror} ({exc.filename})") from None


def release(state_dir: Path | str, timeout: float = GONE_TIMEOUT) -> None:
    """Removes the VM's cgroup and, once the shim is gone from it (``delete``, or
    ``create`` after a failed boot: not the shim's own teardown), the shim's leaf and the
    cgroupsPath directories :func:`place` made, those that are empty; the caller's own stay.
    Converges when there is nothing there."""
    for_vm(state_dir).remove(timeout)
    placed = _placement(state_dir)
    if placed is None:
        return
    shim = Cgroup(name(state_dir) + SHIM, Path(placed["base"]), placed["dirs"])
    if os.getpid() in shim.members():
        return  # the shim's own teardown: delete removes the leaf the shim is in
    shim.remove(timeout)
    for directory in reversed(placed["made"]):
        try:
            Path(directory).rmdir()
        except OSError:
            pass  # not empty (the caller's, or another container's) or gone already

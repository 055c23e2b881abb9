"""A VMM's own cgroup on the host: memory and pids limits sized from its VM, and a kill that
reaches every process left in it, whatever the container's state record says. A VMM
plugin makes it (:func:`for_vm`, :meth:`Cgroup.create` with :func:`limits`) before its VMM
starts, and the VMM enters it itself before it execs (the jail writes its pid to each
``cgroup.procs``, :mod:`runv.api.jail`), so nothing it starts is ever outside it.

The cgroup's name comes from the container's state directory alone (:func:`name`: the
directory's name plus a hash of its real path, so two ``--root`` trees never collide), so
the one teardown finds it without the record. Layouts:

- cgroup v2 (``/sys/fs/cgroup/cgroup.controllers`` exists): ``/sys/fs/cgroup/runv/NAME``,
  with ``memory`` and ``pids`` enabled in the subtree controls on the way;
- cgroup v1 (separate hierarchies, as on this project's CI host):
  ``/sys/fs/cgroup/memory/runv/NAME`` and ``/sys/fs/cgroup/pids/runv/NAME``.

When the container's spec has a ``linux.cgroupsPath``, the core has put the shim there
and recorded it in the state directory (``cgroup.json``, :mod:`runv.vm.cgroupspath`):
the VMM's cgroup is then ``…/PATH/NAME`` instead of ``runv/NAME``, so the caller's limits
and accounting on PATH and above cover the VMM too.
"""

from __future__ import annotations

import hashlib
import json
import os
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
ORPHAN_AGE = 60.0  # seconds after which an empty VMM cgroup in runv's parent is an orphan (a VMM enters at once)


def name(state_dir: Path | str) -> str:
    """The cgroup name of the VM whose state directory is ``state_dir`` (deterministic)."""
    real = os.path.realpath(state_dir)
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.basename(real))[:64].lstrip(".") or "vm"
    return f"{readable}-{digest}"


def limits(memory_mib: int, vcpus: int, code_cache_mib: int = 0) -> tuple[int, int]:
    """The memory limit (bytes) and pids limit of a VMM running a guest of this size (with a
    translated-code cache of ``code_cache_mib`` under an emulator such as TCG)."""
    return (memory_mib + OVERHEAD_MIB + code_cache_mib) << 20, pids_limit(vcpus)


def pids_limit(vcpus: int) -> int:
    """The tasks a VMM of ``vcpus`` may have: its thread pool, one thread per vCPU, its own."""
    return PIDS_BASE + 2 * vcpus


def write_file(path: Path, value: str) -> None:
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
            write_file(memory / "memory.max", str(memory_bytes))
            if (memory / "memory.swap.max").exists():
                write_file(memory / "memory.swap.max", "0")
        else:
            files = ["memory.limit_in_bytes"] + ["memory.memsw.limit_in_bytes"] * (memory / "memory.memsw.limit_in_bytes").exists()
            try:
                current = int((memory / files[0]).read_text())
            except (OSError, ValueError):
                current = 0
            for file in files if memory_bytes <= current else reversed(files):  # lowering: the limit first
                write_file(memory / file, str(memory_bytes))
        write_file(pid_dir / "pids.max", str(pids))

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
        if self.shared:
            sweep(self.parents())
        if self.v2 and self.shared:
            write_file(self.base / "cgroup.subtree_control", ENABLE)
            (self.base / PARENT).mkdir(exist_ok=True)
            write_file(self.base / PARENT / "cgroup.subtree_control", ENABLE)
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
        kill = (lambda _: write_file(kill_file, "1")) if self.v2 and kill_file.exists() else None
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


def sweep(parents: list[Path], older_than: float = ORPHAN_AGE) -> None:
    """Removes the empty VMM cgroups in runv's ``parents`` made over ``older_than`` seconds
    ago: what a VM whose runv processes were all killed left, its state directory emptied
    since (a live VM's cgroup holds its VMM: the kernel refuses to remove it; a stopped
    container's, removed here, is not missed by its ``delete``)."""
    now = time.time()
    for parent in parents:
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False) and now - entry.stat().st_ctime > older_than:
                    os.rmdir(entry.path)
            except OSError:
                continue  # in use (EBUSY), or gone meanwhile


def from_record(data: dict | str) -> Cgroup:
    """The cgroup a VM record names (:meth:`Cgroup.record`; a bare name: runv's parent)."""
    if isinstance(data, str):  # records of VMs started before cgroupsPath was honoured
        return Cgroup(data)
    return Cgroup(data["name"], Path(data["base"]), data["parents"])


def placement(state_dir: Path | str) -> dict | None:
    try:
        return json.loads((Path(state_dir) / RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunvError(f"cannot read {Path(state_dir) / RECORD}: {exc}") from None


def for_vm(state_dir: Path | str, base: Path = BASE) -> Cgroup:
    """The cgroup of the VM whose state directory is ``state_dir``: under its cgroupsPath
    when :func:`place` put it there, else in runv's parent."""
    placed = placement(state_dir)
    if placed is None:
        return Cgroup(name(state_dir), base)
    return Cgroup(name(state_dir), Path(placed["base"]), placed["dirs"])

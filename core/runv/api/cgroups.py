"""A VMM's own cgroup on the host: memory and pids limits sized from its VM, and a kill that
reaches every process left in it, whatever the container's state record says.

The cgroup's name comes from the container's state directory alone (:func:`name`: the
directory's name plus a hash of its real path, so two ``--root`` trees never collide), so
the one teardown finds it without the record. Layouts:

- cgroup v2 (``/sys/fs/cgroup/cgroup.controllers`` exists): ``/sys/fs/cgroup/runv/NAME``,
  with ``memory`` and ``pids`` enabled in the subtree controls on the way;
- cgroup v1 (separate hierarchies, as on this project's CI host):
  ``/sys/fs/cgroup/memory/runv/NAME`` and ``/sys/fs/cgroup/pids/runv/NAME``.

The VMM enters it itself before it execs (the jail writes its pid to each ``cgroup.procs``,
:mod:`runv.api.jail`), so nothing it starts is ever outside it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from runv.api.errors import RunvError
from runv.api.process import kill_until_gone

BASE = Path("/sys/fs/cgroup")
PARENT = "runv"
CONTROLLERS = ("memory", "pids")
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


class Cgroup:
    """The cgroup ``name`` under ``base`` (a cgroupfs mount point; tests give a fake tree)."""

    def __init__(self, cgroup_name: str, base: Path = BASE) -> None:
        self.name = cgroup_name
        self.base = Path(base)
        self.v2 = (self.base / "cgroup.controllers").exists()

    def parents(self) -> list[Path]:
        """The ``runv`` directories the cgroup lives in (one, or one per v1 controller)."""
        if self.v2:
            return [self.base / PARENT]
        return [self.base / controller / PARENT for controller in CONTROLLERS]

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
            memory, pid_dir = (self.dirs()[0], self.dirs()[0]) if self.v2 else self.dirs()
            if self.v2:
                _write(memory / "memory.max", str(memory_bytes))
                if (memory / "memory.swap.max").exists():
                    _write(memory / "memory.swap.max", "0")
            else:
                _write(memory / "memory.limit_in_bytes", str(memory_bytes))
                if (memory / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
                    _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
            _write(pid_dir / "pids.max", str(pids))
        except (OSError, RunvError) as exc:
            self.remove()
            if isinstance(exc, RunvError):
                raise
            raise RunvError(f"cannot make the VMM's cgroup {self.name} under {self.base}: {exc.strerror}") from None

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
        if self.v2:
            enable = " ".join(f"+{c}" for c in CONTROLLERS)
            _write(self.base / "cgroup.subtree_control", enable)
            (self.base / PARENT).mkdir(exist_ok=True)
            _write(self.base / PARENT / "cgroup.subtree_control", enable)
        for directory in self.dirs():  # v2: the parent is not remade here (it must carry the subtree controls)
            directory.mkdir(parents=not self.v2, exist_ok=True)

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
        for parent in self.parents():
            try:
                parent.rmdir()
            except OSError:
                pass  # not empty (another VM's) or already gone


def for_vm(state_dir: Path | str, base: Path = BASE) -> Cgroup:
    """The cgroup of the VM whose state directory is ``state_dir``."""
    return Cgroup(name(state_dir), base)

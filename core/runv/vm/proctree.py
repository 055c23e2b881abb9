"""Killing a process with everything it started (a shim killed mid-boot must not leave a
VMM it started but had not recorded yet: docs/security.md, "Faults"), and reading how a
child died."""

from __future__ import annotations

import os
import signal
import time

from runv.api.errors import RunvError
from runv.api.process import POLL, is_running, process_start_time

STOP_WAIT = 5.0  # seconds for a process to stop on SIGSTOP, and for a killed tree to be gone


def _state(pid: int, tid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def _tasks(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _children(pid: int) -> set[int]:
    """The children of every thread of ``pid``; read while it is stopped (the kernel's list
    is only exact for a process that cannot fork meanwhile)."""
    found: set[int] = set()
    for tid in _tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def _stop(pid: int, deadline: float) -> None:
    """SIGSTOPs ``pid`` and waits until each of its threads is stopped (or gone), so that a
    fork it was making has finished and shows in its children."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    while any(_state(pid, tid) not in (None, "T", "t", "Z", "X") for tid in _tasks(pid)):
        if time.monotonic() > deadline:
            return  # stuck in the kernel (D): killed below all the same
        time.sleep(POLL / 4)


def kill_tree(pid: int, start_time: int | None) -> None:
    """Freezes ``pid`` (when it is still the process that started at ``start_time``), then
    its descendants one generation at a time, so none can start another; SIGKILLs them all
    and returns once every one is gone. Raises RunvError naming any that survive."""
    if not is_running(pid, start_time):
        return
    deadline = time.monotonic() + STOP_WAIT
    tree = {pid: start_time}
    generation = [pid]
    while generation:
        for member in generation:
            _stop(member, deadline)
        born = set()
        for member in generation:
            born |= _children(member)
        generation = []
        for child in born - tree.keys():
            started = process_start_time(child)
            if started is not None:
                tree[child] = started
                generation.append(child)
    for member, started in tree.items():
        if is_running(member, started):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_WAIT
    while alive := [m for m, started in tree.items() if is_running(m, started)]:
        if time.monotonic() > deadline:
            raise RunvError(f"processes {alive} survive SIGKILL")
        time.sleep(POLL)  # a zombie counts as gone (is_running): its parent reaps it


def child_status(pid: int, wait: float) -> int | None:
    """The wait status of this process's child ``pid`` once it has exited (reaping it);
    None when it still runs after ``wait`` seconds or is not ours to reap."""
    deadline = time.monotonic() + wait
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)

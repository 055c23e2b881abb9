"""Host processes by identity (PID plus start time, so a reused PID is never mistaken for
ours), and the stop loop every VMM driver needs: ask, wait, kill, wait."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable  # not typing: `runv state` imports this module (typing costs ≈3 ms)

POLL = 0.02  # seconds between looks at a process that is going away


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def is_running(pid: int | None, start_time: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time``."""
    return bool(pid) and start_time is not None and process_start_time(pid) == start_time


def wait_gone(pid: int, start_time: int | None, timeout: float) -> bool:
    """Waits up to ``timeout`` seconds for the process to exit, reaping it when it is our
    child; True once it is gone."""
    deadline = time.monotonic() + timeout
    while is_running(pid, start_time):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def stop_process(pid: int | None, start_time: int | None, *, ask: Callable[[], None] | None = None,
                 grace: float = 5.0, force: bool = False) -> None:
    """Stops a process and returns once it is gone: ``ask()`` it to quit (any exception
    from ``ask`` counts as a refusal) and wait ``grace`` seconds, then SIGKILL it. With
    ``force``, or no ``ask``, it is killed at once. Converges when it is already gone."""
    if not pid or not is_running(pid, start_time):
        return
    if ask is not None and not force:
        try:
            ask()
        except Exception:  # noqa: BLE001 - a VMM that cannot be asked is killed
            pass
        if wait_gone(pid, start_time, grace):
            return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_gone(pid, start_time, grace)


def kill_until_gone(members: Callable[[], list[int]], what: str, timeout: float,
                    kill: Callable[[list[int]], None] | None = None) -> None:
    """SIGKILLs every process ``members()`` lists (or hands them to ``kill``) until it lists
    none; RunvError naming ``what`` when some survive ``timeout`` seconds."""
    from runv.api.errors import RunvError

    deadline = time.monotonic() + timeout
    while pids := members():
        if kill is not None:
            kill(pids)
        else:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if time.monotonic() > deadline:
            raise RunvError(f"{what}: processes {sorted(pids)} survived SIGKILL for {timeout:.0f} s")
        time.sleep(POLL)

"""Observing a ``runv create`` from outside, to kill it or race it at a chosen moment
(the fault tests: tests/unit/test_faults.py, tests/vm/test_vm_faults.py). Nothing here reaches
into runv: each moment is what any caller can see (a directory, a process, a file a
bundle's own prestart hook writes).

Moments, in the order a create passes them:

- ``no-dir``: the container's state directory does not exist yet;
- ``dir``: it exists (with its record);
- ``unrecorded``: a VM process runs that the record does not name yet;
- ``booting``: a VM process runs, the agent has not answered (the hooks have not run);
- ``hooks``: the agent answered and the hooks run; create has not returned.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from runv.testing import vm_processes_in

MOMENTS = ("no-dir", "dir", "unrecorded", "booting", "hooks")
MARK = "hooked"  # in the bundle: what the prestart hook of :func:`hold_in_hooks` touches


def record(state_dir: Path) -> dict | None:
    """The container's state.json as it is now, None when there is none (or half written)."""
    try:
        return json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None


def hold_in_hooks(bundle: Path, seconds: float = 3.0) -> Path:
    """Gives the bundle a prestart hook that touches ``bundle/MARK`` and then holds create
    for ``seconds``: the moment "agent ready, create not returned" becomes seconds long."""
    config = json.loads((bundle / "config.json").read_text())
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"touch {bundle / MARK}; sleep {seconds}"]}
    config.setdefault("hooks", {}).setdefault("prestart", []).append(hook)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def reached(moment: str, state_dir: Path, bundle: Path) -> bool:
    """Whether the create of the container in ``state_dir`` is at ``moment`` now."""
    if moment == "no-dir":
        return not state_dir.exists()
    if moment == "dir":
        return state_dir.exists()
    if moment == "unrecorded":
        return bool(vm_processes_in(state_dir)) and (record(state_dir) or {}).get("vm") is None
    if moment == "booting":
        return bool(vm_processes_in(state_dir)) and not (bundle / MARK).exists()
    if moment == "hooks":
        return (bundle / MARK).exists()
    raise ValueError(f"unknown moment {moment!r}: one of {', '.join(MOMENTS)}")


def wait_for_moment(moment: str, state_dir: Path, bundle: Path, create: subprocess.Popen, timeout: float = 60.0) -> None:
    """Polls until the background ``create`` is at ``moment``; AssertionError when it
    ended, or went past the moment (the hooks ran), without being seen there."""
    deadline = time.monotonic() + timeout
    while not reached(moment, state_dir, bundle):
        if create.poll() is not None or (moment != "hooks" and (bundle / MARK).exists()):
            raise AssertionError(f"create went past {moment!r} unseen (exit {create.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"create did not reach {moment!r} within {timeout:.0f} s")
        time.sleep(0.002)


def unrecorded_vms(root: Path) -> list[int]:
    """VM processes under ``root`` whose container has no record: what must never exist
    (a VM no state directory points at, that no ``delete`` could find)."""
    orphans = []
    for pid in vm_processes_in(root):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if record(Path(cwd)) is None:
            orphans.append(pid)
    return orphans


def wait_status(run, cid: str, wanted: str, timeout: float = 60.0) -> None:
    """Polls ``run("state", cid)`` (a test's runv caller) until the container is ``wanted``."""
    deadline = time.monotonic() + timeout
    while (status := json.loads(run("state", cid, check=True).stdout)["status"]) != wanted:
        assert time.monotonic() < deadline, f"{cid} is {status}, not {wanted}"
        time.sleep(0.1)

"""Running host tools with errors for people, and reading what a VM printed last."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from runv.api.errors import RunvError

T = TypeVar("T")


def run_tool(argv: Sequence[str], what: str, hint: str = "", *, install: str = "", cwd: Path | None = None,
             input: str | None = None, env: dict[str, str] | None = None, timeout: float | None = None) -> str:
    """Runs a host tool and returns its stdout. A missing tool, a timeout or a non-zero exit
    raises RunvError as one line: what failed, the tool's last words, and ``hint`` (what to
    do) when given; ``install`` says how to get a missing tool."""
    tool = Path(argv[0]).name
    try:
        result = subprocess.run(list(argv), cwd=cwd, input=input, env=env, capture_output=True, text=True, timeout=timeout,
                                stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise RunvError(f"{what}: {tool} is not installed ({install or hint or 'install it'})") from None
    except subprocess.TimeoutExpired:
        raise RunvError(f"{what}: {tool} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        words = " | ".join(line.strip() for line in (result.stderr or result.stdout).strip().splitlines()[-3:])
        raise RunvError(f"{what}: {tool} failed (exit {result.returncode}): {words or 'no output'}" + (f"; {hint}" if hint else ""))
    return result.stdout


TAIL_BYTES = 64 << 10  # of a console log read for its last words: the guest writes it, it may be huge


def last_words(log: Path, lines: int = 5) -> str:
    """The last non-empty lines of a VM's console log (its guest console and the VMM's
    stderr), joined into one line for error messages: only its tail is read, and what the
    guest wrote is escaped (no control characters reach a terminal or a log line)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
            text = f.read(TAIL_BYTES).decode(errors="replace")
    except OSError:
        text = ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join("".join(c if c.isprintable() else repr(c)[1:-1] for c in line[:500]) for line in kept) or "no output"


def await_start(proc: subprocess.Popen, ready: Callable[[], T | None], console_log: Path, what: str, timeout: float, *,
                expected: str = "start", every: float = 0.01) -> T:
    """Waits for a VMM (or its helper) just started as ``proc``: returns the first true
    value of ``ready()``, polled every ``every`` seconds. A process that exits first fails as
    ``WHAT failed to start (exit N): ...``; one that takes longer than ``timeout`` seconds is
    killed and fails as ``WHAT did not EXPECTED within T s: ...``; both quote the last
    words of ``console_log`` (where the VMM's stderr goes), as RunvError."""
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if proc.poll() is not None:
            raise RunvError(f"{what} failed to start (exit {proc.returncode}): {last_words(console_log)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RunvError(f"{what} did not {expected} within {timeout:.0f} s: {last_words(console_log)}")
        time.sleep(every)
    return found

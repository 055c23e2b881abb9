"""Forking the long-lived host processes (container shims, exec relays) the runc way:
a child in its own session that reports ``ok`` or an error before the caller returns."""

from __future__ import annotations

import os
from collections.abc import Callable

OK = "ok"


def spawn_session(child: Callable[[Callable[[str], None]], int], own_pids: bool = False) -> tuple[int, str]:
    """Forks (with ``own_pids``, a child that is the init of a PID namespace of its own:
    :mod:`runv.vm.pidns`); the child leads a new session and runs ``child(report)``, which
    must call ``report(OK)`` or ``report(error message)`` once (False when the caller is
    gone: it was killed meanwhile), and returns the child's exit code. Returns the child's
    PID and what it reported ("" if it died first)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    if own_pids:
        from runv.vm import pidns

        pid = pidns.fork()
    else:
        pid = os.fork()
    if pid == 0:
        code = 255
        try:
            os.close(ready_r)
            os.setsid()

            def report(message: str) -> bool:
                try:
                    os.write(ready_w, message.encode())
                    return True
                except BrokenPipeError:
                    return False
                finally:
                    os.close(ready_w)

            code = child(report)
        finally:
            os._exit(code)
    os.close(ready_w)
    answer = b""
    while chunk := os.read(ready_r, 4096):
        answer += chunk
    os.close(ready_r)
    if answer.decode(errors="replace") != OK:
        os.waitpid(pid, 0)
    return pid, answer.decode(errors="replace")


def write_pid_file(path: str | os.PathLike | None, pid: int) -> None:
    """Writes ``--pid-file`` atomically (callers poll for it)."""
    if path:
        tmp = os.fspath(path) + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, path)


def wait_exit_code(pid: int) -> int:
    """Waits for a child and returns its exit code, 128+N when killed by signal N."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code

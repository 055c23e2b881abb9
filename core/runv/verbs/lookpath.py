"""Finding the container's program in its rootfs on the host, before a VM boots.

runc resolves ``process.args[0]`` at ``create`` and fails there, with Go's wording, when
it is missing; Podman and containerd read that failure (Podman turns "executable file not
found" and "no such file or directory" into exit status 127). runv execs the program in
the guest only at ``start``, so it looks the program up here first: a clear error from
``create``, and no VM booted for nothing. Only a certain miss is refused: a program under
one of the spec's mounts (which the host cannot see) is left to the guest.
"""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

from runv.api.errors import RunvError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_LINKS = 40


def resolve_in_root(rootfs: str, path: str) -> str | None:
    """The host path of container path ``path`` (absolute), following symlinks as the
    container would see them (absolute targets start again at ``rootfs``); None when
    some component does not exist."""
    parts = list(PurePosixPath(path).parts[1:])
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(rootfs, *done, part)
        try:
            mode = os.lstat(host).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            parts = list(PurePosixPath(target).parts[1 if target.startswith("/") else 0 :]) + parts
            continue
        done.append(part)
    return os.path.join(rootfs, *done)


def _under_mount(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def check_program(rootfs: str, args: tuple[str, ...] | list[str], env: tuple[str, ...] | list[str], cwd: str, mounts: list[str]) -> None:
    """Raises RunvError, worded as runc's create does, when ``args[0]`` certainly cannot
    be executed in the container."""
    if not args:
        return
    program = args[0]
    variables = dict(item.split("=", 1) for item in env if "=" in item)
    if "/" in program:
        candidates = [program if program.startswith("/") else os.path.join(cwd or "/", program)]
    else:
        candidates = [os.path.join(d or ".", program) for d in variables.get("PATH", DEFAULT_PATH).split(":")]
        candidates = [c if c.startswith("/") else os.path.join(cwd or "/", c) for c in candidates]
    denied = False
    for candidate in candidates:
        if _under_mount(os.path.normpath(candidate), mounts):
            return  # hidden from the host: the guest decides
        host = resolve_in_root(rootfs, candidate)
        if host is None or not os.path.exists(host):
            continue
        st = os.stat(host)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return
        denied = True
    if "/" in program:
        reason = "permission denied" if denied else f"stat {program}: no such file or directory"
        raise RunvError(f'exec: "{program}": {reason}')
    if denied:
        raise RunvError(f'exec: "{program}": permission denied')
    raise RunvError(f'exec: "{program}": executable file not found in $PATH')

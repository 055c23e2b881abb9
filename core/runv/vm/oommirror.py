"""A guest's OOM kill repeated on the host as one real OOM kill in the container's host
memory cgroup: the leaf its shim (the PID callers know) is in, ``NAME.shim`` under
``linux.cgroupsPath`` (:mod:`runv.vm.cgroupspath`). Clients learn of OOM kills from the
cgroup of the container's PID (containerd's shim, and so Docker's ``State.OOMKilled``:
v1's ``memory.oom_control`` eventfd, v2's ``memory.events``; cAdvisor, systemd), where
the guest's kernel kills no host process.

A sacrificial child joins the leaf, makes itself the OOM killer's first choice
(``oom_score_adj`` 1000) and locks what it allocates (no swap can save it); the leaf's
limit is lowered to what the leaf holds now, the child allocates until the kernel kills
it, and the limit is put back. Only the shim's leaf is squeezed: never the VMM's cgroup
(the guest's RAM) nor the container's limit above it.
"""

from __future__ import annotations

import errno
import select
import signal
import subprocess
import sys
from pathlib import Path

from runv.api.vmmcgroup import Cgroup, name, placement
from runv.log import logger
from runv.vm.cgroupspath import SHIM

MARGIN = 4 << 20  # bytes the leaf's limit is lowered to above what it holds
HOARD = 64 << 20  # bytes the child allocates at most (it is killed past MARGIN)
WAIT = 10.0  # seconds for the child to be ready, and then to be killed
COMM = "runv-oom-mirror"  # the victim's name in the host's kernel log
CHILD = """
import ctypes, os, sys
with open(sys.argv[1], "w") as f: f.write("0")
with open("/proc/self/oom_score_adj", "w") as f: f.write("1000")
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, sys.argv[3].encode(), 0, 0, 0)
if libc.mlockall(3):
    sys.exit("mlockall: " + os.strerror(ctypes.get_errno()))
os.write(1, b"r")
os.read(0, 1)
hoard = [bytearray(1 << 20) for _ in range(int(sys.argv[2]) >> 20)]
"""


def leaf(state_dir: Path | str) -> tuple[Path, bool] | None:
    """The memory directory of the container's shim leaf and whether it is cgroup v2, or
    None without a cgroupsPath (the shim is then in its caller's cgroup: not the container's)."""
    placed = placement(state_dir)
    if placed is None:
        return None
    shim = Cgroup(name(state_dir) + SHIM, Path(placed["base"]), placed["dirs"])  # as cgroupspath.release finds it
    return shim.dirs()[0], shim.v2


def mirror(state_dir: Path | str, container_id: str) -> bool:
    """One OOM kill in the host leaf of the container whose state directory is
    ``state_dir``; False (logged) where there is none or it could not be done."""
    found = leaf(state_dir)
    if found is None:
        logger.info("container %s: an OOM kill in its guest; no cgroupsPath to report it in on the host", container_id)
        return False
    directory, v2 = found
    try:
        _kill_one(directory, v2)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("container %s: the guest's OOM kill not repeated in %s: %s", container_id, directory, exc)
        return False
    logger.info("container %s: an OOM kill in its guest, repeated in %s", container_id, directory)
    return True


def _kill_one(directory: Path, v2: bool) -> None:
    """The sacrificial child started in ``directory``, squeezed and killed; OSError where
    it was not (the limit is put back in every case)."""
    limit = directory / ("memory.max" if v2 else "memory.limit_in_bytes")
    usage = directory / ("memory.current" if v2 else "memory.usage_in_bytes")
    old = limit.read_text().strip()
    child = subprocess.Popen([sys.executable, "-S", "-c", CHILD, str(directory / "cgroup.procs"), str(HOARD),
                              COMM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if not select.select([child.stdout], [], [], WAIT)[0] or child.stdout.read(1) != b"r":
            child.kill()
            why = child.communicate()[1].decode(errors="replace").strip().splitlines()
            raise OSError(why[-1] if why else "its child was not ready")
        try:
            _lower(limit, usage)
            child.stdin.write(b"g")
            child.stdin.flush()
            child.wait(WAIT)
        finally:
            limit.write_text(old)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    if child.returncode != -signal.SIGKILL:
        raise OSError(f"its child was not killed (exit status {child.returncode})")


def _lower(limit: Path, usage: Path) -> None:
    """The limit set a little above the usage; v1 refuses (EBUSY) a limit below a usage
    that grew meanwhile: read again."""
    for attempt in range(5):
        try:
            limit.write_text(str(int(usage.read_text()) + MARGIN))
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == 4:
                raise

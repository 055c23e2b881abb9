"""Running out of memory decisively, as a host with swap does not need to.

A guest has no swap, and the programs its containers run are pages of a shared filesystem
(virtio-fs) it can always read again: when a container fills the VM's memory, the kernel
keeps evicting and re-reading those pages (thrashing) and its OOM killer never runs. Measured
under TCG: a busybox ``awk`` that allocates without end ran over 2 minutes with its binary
on virtio-fs, and was OOM-killed in 5 s with the same binary on a tmpfs. So the agent of a
VM asks the kernel for a PSI trigger on full memory stalls (every task waiting for memory)
and, each time it fires, has the kernel's own OOM killer choose and kill a process
(``/proc/sysrq-trigger``, ``f``): its choice, its log line, its ``oom_kill`` count in the
victim's cgroup (what ``runv events`` reports as an ``oom`` event).
"""

import os

PSI = "/proc/pressure/memory"
# a full stall of TRIGGER_US within each window of WINDOW_US (the kernel's minimum window is 0.5 s)
TRIGGER_US, WINDOW_US = 1_000_000, 3_000_000
SYSRQ = "/proc/sysrq-trigger"
OOM_KILLER = b"f"


def watch() -> int | None:
    """A descriptor that polls POLLPRI when memory stalls fully for long enough; None where
    the kernel has no PSI (nothing to watch)."""
    try:
        fd = os.open(PSI, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.write(fd, f"full {TRIGGER_US} {WINDOW_US}".encode() + b"\0")
    except OSError:
        os.close(fd)
        return None
    return fd


def on_stall() -> None:
    """The memory has stalled: the kernel's OOM killer picks and kills a process."""
    with open(SYSRQ, "wb") as f:
        f.write(OOM_KILLER)

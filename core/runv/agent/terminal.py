"""The terminal a process may get: a pty pair from the container's devpts, and its window size."""

import fcntl
import os
import struct
import termios

from runv.agent.errors import AgentError

TIOCSPTLCK, TIOCGPTPEER = 0x40045431, 0x5441  # <asm-generic/ioctls.h>; not in termios


def open_pty(rootfs: str) -> tuple:
    """A pty pair from the devpts instance the container sees: a spec that mounts its own
    /dev/pts (Podman's and containerd's do) hides the agent's, and a pty from there would
    leave the process without a name for its terminal (``tty``: not a tty)."""
    ptmx = os.path.join(rootfs, "dev/pts/ptmx")
    if rootfs == "/" or not os.path.exists(ptmx):
        return os.openpty()
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    return master, fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    if rows and cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def op_winsize(agent, message: dict) -> None:
    proc = agent.processes.lookup(message["proc"])
    if proc.tty_fd is None:
        raise AgentError(f"process {message['proc']!r} has no terminal")
    set_winsize(proc.tty_fd, message["rows"], message["cols"])

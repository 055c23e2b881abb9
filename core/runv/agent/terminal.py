"""The terminal a process may get: a pty pair from the container's devpts, and its window size."""

import fcntl
import os
import socket
import struct
import termios

from runv.agent.errors import RequestError

TIOCSPTLCK, TIOCGPTPEER = 0x40045431, 0x5441  # <asm-generic/ioctls.h>; not in termios
CONTAINER_PTMX = "/dev/pts/ptmx"  # runc's /dev/ptmx is a link to it


def open_pty(ptmx: str) -> tuple:
    """A pty pair from the devpts instance whose ``ptmx`` is given (``os.openpty()`` where
    there is none). The pty must come from the devpts the process sees: from another one
    the process has no name for its terminal (``tty``: not a tty). In a VM the container's
    process opens it itself, once its mounts are made (:func:`send_master`)."""
    if not os.path.exists(ptmx):
        return os.openpty()
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    return master, fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)


def send_master(sock: socket.socket, rows: int, cols: int) -> int:
    """In the container's process, after its mounts: a pty from its own ``/dev/pts``, sized,
    its master sent to the agent over ``sock`` (as runc sends one over its console socket);
    returns the slave."""
    master, slave = open_pty(CONTAINER_PTMX)
    set_winsize(master, rows, cols)
    socket.send_fds(sock, [b"pty"], [master])
    os.close(master)
    sock.close()
    return slave


def receive_master(sock: socket.socket):
    """The agent's end of :func:`send_master`: the master, or None when the process failed first."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    finally:
        sock.close()
    return fds[0] if fds else None


def set_winsize(fd: int, rows: int, cols: int) -> None:
    if rows and cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def op_winsize(agent, message: dict) -> None:
    proc = agent.processes.lookup(message["proc"])
    if proc.tty_fd is None:
        raise RequestError(f"process {message['proc']!r} has no terminal")
    set_winsize(proc.tty_fd, message["rows"], message["cols"])

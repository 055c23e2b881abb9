"""Terminals on the host side: the pty whose master a caller gets over ``--console-socket``
(exactly as runc sends it), and attaching the caller's own terminal to such a master."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import termios
import tty
from collections.abc import Iterator

from runv.api.errors import RunvError
from runv.stdio import write_all


def open_pty(rows: int = 0, cols: int = 0) -> tuple[int, int]:
    """A pty pair whose slave is raw: the guest's pty does all line discipline once."""
    master, slave = os.openpty()
    tty.setraw(slave)
    if rows and cols:
        set_winsize(master, rows, cols)
    return master, slave


def get_winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def take_controlling_tty(fd: int) -> None:
    """Makes ``fd`` the caller's controlling terminal (it must lead its session), so that
    a resize of the master arrives as SIGWINCH and a closed master as SIGHUP."""
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def stdio_to(fd: int) -> None:
    """Puts ``fd`` (a pty slave) on stdin, stdout and stderr, as runc's init does with a
    terminal: the caller's stdio is not the container's then, and a caller that reads the
    runtime's output until end-of-file (containerd's go-runc) must not wait for the
    container to exit."""
    for target in (0, 1, 2):
        os.dup2(fd, target)


def check_console_socket(path: str | os.PathLike) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RunvError(f"console socket {path} does not exist") from None
    except OSError as exc:
        raise RunvError(f"console socket {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise RunvError(f"console socket {path} is not a unix socket")


def send_master(path: str | os.PathLike, master: int) -> None:
    """Sends the pty master over the unix socket at ``path`` with SCM_RIGHTS, as runc does
    (the message carries the pty's name), then closes our copy."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            socket.send_fds(sock, [b"/dev/ptmx"], [master])
    except OSError as exc:
        raise RunvError(f"cannot send the terminal to console socket {path}: {exc.strerror or exc}") from None
    finally:
        os.close(master)


def receive_master(sock: socket.socket) -> int:
    """The pty master sent to a listening console socket (the receiving end of send_master)."""
    conn, _ = sock.accept()
    with conn:
        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    if not fds:
        raise RunvError("no terminal arrived on the console socket")
    return fds[0]


@contextlib.contextmanager
def private_console_socket() -> Iterator[tuple[str, socket.socket]]:
    """A listening console socket in a private temporary directory, for ``run -t`` and
    ``exec -t`` attached to the caller's own terminal."""
    import tempfile  # only an exec with a terminal and no --console-socket needs it

    with tempfile.TemporaryDirectory(prefix="runv-console-") as tmp:
        path = os.path.join(tmp, "console.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(path)
            sock.listen(1)
            yield path, sock


def attach(master: int) -> None:
    """Relays the caller's terminal (stdin/stdout, put in raw mode) to ``master`` until the
    other side closes it; window-size changes of the caller's terminal follow along."""
    saved = termios.tcgetattr(0)
    set_winsize(master, *get_winsize(0))
    previous = signal.signal(signal.SIGWINCH, lambda *_: set_winsize(master, *get_winsize(0)))
    tty.setraw(0)
    try:
        stdin_open = True
        while True:
            fds = [master] + ([0] if stdin_open else [])
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the slave side is closed everywhere
                    data = b""
                if not data:
                    return
                write_all(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    write_all(master, data)
                else:
                    stdin_open = False
    finally:
        termios.tcsetattr(0, termios.TCSAFLUSH, saved)
        signal.signal(signal.SIGWINCH, previous)
        os.close(master)


def require_terminal() -> None:
    """``-t`` without a console socket attaches the caller's terminal: there must be one."""
    if not os.isatty(0):
        raise RunvError("cannot allocate a terminal: stdin is not a terminal and no --console-socket was given")


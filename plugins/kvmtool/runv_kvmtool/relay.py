"""Serves a pty (kvmtool's ttyS1, where the guest agent talks) at a unix socket.

``python -m runv_kvmtool.relay PTY SOCKET``: one host connection at a time, bytes copied
both ways; exits when the pty closes (lkvm exited). Bytes the guest writes while no host
is connected wait in the pty.
"""

import os
import select
import socket
import sys
import termios


def raw(fd: int) -> None:
    attrs = termios.tcgetattr(fd)
    attrs[0] = attrs[1] = attrs[3] = 0
    attrs[2] = (attrs[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def serve(pty: str, path: str) -> None:
    tty = os.open(pty, os.O_RDWR | os.O_NOCTTY)
    raw(tty)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn:
            while True:
                ready, _, _ = select.select([tty, conn.fileno()], [], [])
                if tty in ready:
                    try:
                        data = os.read(tty, 65536)
                    except OSError:  # EIO: the VMM closed the pty
                        return
                    if not data:
                        return
                    conn.sendall(data)
                if conn.fileno() in ready:
                    data = conn.recv(65536)
                    if not data:
                        break
                    os.write(tty, data)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])

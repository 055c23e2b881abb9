"""Unix sockets at any path length: runv's state directories can be deeper than sun_path allows."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

SUN_PATH_MAX = 100  # bytes of a path bind()/connect() take as they are (sun_path is 108)


@contextmanager
def socket_name(path: str | os.PathLike) -> Iterator[str]:
    """A name to bind or connect a unix socket at ``path``, also when the path is longer
    than sun_path allows (containerd's and Podman's roots): its directory is reached
    through /proc/self/fd while the context is open."""
    path = os.fspath(path)
    if len(os.fsencode(path)) < SUN_PATH_MAX:
        yield path
        return
    dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{os.path.basename(path)}"
    finally:
        os.close(dirfd)


def connect_unix(path: str | os.PathLike) -> socket.socket:
    """A connected unix stream socket (any path length); raises OSError, leaking nothing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with socket_name(path) as name:
            sock.connect(name)
    except OSError:
        sock.close()
        raise
    return sock

"""The host channel: which one the kernel command line names, how to open it, how the host comes and goes.

``runv.agent=`` on the kernel command line picks the channel:

* absent: the virtio-serial port named ``org.runv.agent`` (QEMU), found through
  ``/sys/class/virtio-ports/*/name`` (there is no udev in the guest);
* ``runv.agent=/dev/ttyS1`` (or ``/dev/hvc1``): a serial tty, put in raw mode (kvmtool, Xen);
* ``runv.agent=vsock:PORT``: an AF_VSOCK listener on ``VMADDR_CID_ANY:PORT``.

Every channel offers the agent loop the same few things: ``connected``; ``fd`` (the
connected descriptor); ``waiting()``, the ``(fd, poll mask)`` that shows the host
arriving; ``arrived(mask)``, True once it has; and ``lost()``, True when the agent
should wait for the host to come back rather than stop.
"""

import os
import select
import socket
import stat
import termios
import time

from runv.agent.sysfs import wait_for_device

PORT_NAME = "org.runv.agent"
VIRTIO_PORTS = "/sys/class/virtio-ports"
PORT_WAIT = 5.0  # seconds the virtio-serial port may take to show up at boot
AGENT_ARG = "runv.agent="
VSOCK_PREFIX = "vsock:"
AWAY_BACKOFF = 0.1  # seconds between looks at a port whose host end is closed
SUN_PATH_MAX = 100  # bytes of a socket path bind() takes as it is (sun_path holds 108)


class Stream:
    """A descriptor already connected to the host (a socketpair in the tests); when it
    closes the agent's work is done."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.connected = True
        os.set_blocking(fd, False)

    def waiting(self) -> tuple:
        return self.fd, select.POLLOUT

    def arrived(self, mask: int) -> bool:
        self.connected = True
        return True

    def lost(self) -> bool:
        return False


class Port(Stream):
    """A virtio-serial port or a tty: one descriptor for good, the host at its other end
    comes and goes. A port shows POLLOUT once the host end is open; while it is closed
    the port reports POLLHUP (and reads return 0) forever, so the agent backs off."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.connected = False

    def arrived(self, mask: int) -> bool:
        if mask & select.POLLHUP:
            time.sleep(AWAY_BACKOFF)
            return False
        self.connected = True
        return True

    def lost(self) -> bool:
        self.connected = False
        time.sleep(AWAY_BACKOFF)
        return True


class Listener:
    """A listening socket (vsock in the guest, unix in ``--socket`` mode): one host
    connection at a time; when it ends, the next connection is accepted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = None
        self.fd = None
        self.connected = False
        sock.setblocking(False)

    def waiting(self) -> tuple:
        return self.sock.fileno(), select.POLLIN

    def arrived(self, mask: int) -> bool:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False
        conn.setblocking(False)
        self.conn, self.fd, self.connected = conn, conn.fileno(), True
        return True

    def lost(self) -> bool:
        self.conn.close()
        self.conn, self.fd, self.connected = None, None, False
        return True


def agent_arg(args: list) -> str | None:
    """The value of ``runv.agent=`` among the kernel command line's ``args``, or None."""
    for arg in args:
        if arg.startswith(AGENT_ARG):
            return arg[len(AGENT_ARG):]
    return None


def vsock_port(args: list) -> int | None:
    """The port of ``runv.agent=vsock:PORT``, or None when the channel is not vsock."""
    value = agent_arg(args)
    if value is None or not value.startswith(VSOCK_PREFIX):
        return None
    port = value[len(VSOCK_PREFIX):]
    if not port.isdigit() or not 0 < int(port) < 1 << 32:
        raise SystemExit(f"runv-agent: bad vsock port in {AGENT_ARG}{value}")
    return int(port)


def serial_channel(args: list) -> str | None:
    """The tty the kernel command line names with ``runv.agent=``, or None (also for vsock)."""
    value = agent_arg(args)
    return None if value is None or value.startswith(VSOCK_PREFIX) else value


def find_port(base: str = VIRTIO_PORTS, timeout: float = PORT_WAIT, dev: str = "/dev") -> str:
    """The /dev node of the virtio-serial port the host named ``org.runv.agent``."""
    path = wait_for_device(base, "name", PORT_NAME, timeout, dev)
    if path is None:
        raise SystemExit(f"runv-agent: no virtio-serial port named {PORT_NAME}")
    return path


def make_raw(fd: int) -> None:
    """A serial tty as a byte pipe: no echo, no line discipline, 8 bits, no flow control."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB | termios.CRTSCTS)) | termios.CS8 | termios.CLOCAL
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def open_device(path: str) -> Port:
    """A virtio-serial port or a tty (made raw) at ``path``."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    if os.isatty(fd):
        make_raw(fd)
    return Port(fd)


def listen_vsock(port: int) -> Listener:
    """A listener on vsock ``VMADDR_CID_ANY:port``: the host connects to the guest's CID."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind((socket.VMADDR_CID_ANY, port))
    sock.listen(1)
    return Listener(sock)


def listen_unix(path: str) -> Listener:
    """A listener on a unix socket at ``path`` (``--socket`` mode); a stale socket there is replaced."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    if len(os.fsencode(path)) < SUN_PATH_MAX:
        sock.bind(path)
    else:  # deeper than sun_path allows: bind through the directory's descriptor
        dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_CLOEXEC)
        try:
            sock.bind(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
        finally:
            os.close(dirfd)
    sock.listen(1)
    return Listener(sock)


def from_cmdline(args: list) -> tuple:
    """The channel the kernel command line ``args`` names, opened: ``(description, channel)``."""
    port = vsock_port(args)
    if port is not None:
        return f"vsock port {port}", listen_vsock(port)
    path = serial_channel(args) or find_port()
    return path, open_device(path)

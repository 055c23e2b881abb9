"""The guest agent: PID 1's right hand inside the VM (stdlib only).

It finds the host channel (a virtio-serial port named ``org.runv.agent``), says
``ready``, then serves requests: mount the container rootfs, start processes in it with
their stdio relayed as streams, deliver signals and window sizes, report exits, list
processes, power off. The same ``Agent`` class runs on the host over a socketpair in
tests (``Agent(fd, rootfs="/")`` starts processes without chroot).
"""

import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
import termios
import time

from runv.agent.protocol import CTRL, FrameReader, ProtocolError, encode_ctrl, encode_data

PORT_NAME = "org.runv.agent"
ROOTFS = "/rootfs"
READ_CHUNK = 65536
HIGH_WATER = 4 << 20  # stop reading process output while this much waits for the host
EXIT_GRACE = 1.0  # seconds an exited process's output may keep flowing before exit is sent
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2]): add entropy and credit it
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the CRNG from the pool now


DEBUG = False  # set from ``runv.debug`` on the kernel command line


def log(message: str) -> None:
    """One line on the guest console, in debug mode only."""
    if DEBUG:
        os.write(2, f"runv-agent: {message}\n".encode())


class Process:
    """A process the host started: its pid, streams and, once reaped, its status."""

    def __init__(self, name: str, pid: int, streams: dict, tty_fd) -> None:
        self.name = name
        self.pid = pid
        self.outputs = streams["outputs"]  # fd -> channel
        self.stdin_fd = streams["stdin_fd"]
        self.stdin_channel = streams["stdin_channel"]
        self.stdin_queue = bytearray()
        self.stdin_eof = False
        self.tty_fd = tty_fd
        self.status = None
        self.exited_at = None


class Agent:
    """Serves one host channel; ``run()`` returns when the host is gone (socket mode)."""

    def __init__(self, fd: int, *, rootfs: str = ROOTFS, is_port: bool = False) -> None:
        self.fd = fd
        self.rootfs = rootfs
        self.is_port = is_port
        self.reader = FrameReader()
        self.outbuf = bytearray()
        self.processes = {}  # name -> Process
        self.by_fd = {}  # output fd -> Process
        self.connected = not is_port
        self.running = True
        os.set_blocking(fd, False)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    # ---------------------------------------------------------------- I/O loop

    def send(self, frame: bytes) -> None:
        self.outbuf += frame

    def run(self) -> None:
        if self.connected:
            self.send(encode_ctrl(self.ready_event()))
        while self.running:
            self.step()

    def ready_event(self) -> dict:
        return {"event": "ready", **self.identity()}

    def identity(self) -> dict:
        return {"pid": os.getpid(), "kernel": os.uname().release}

    def step(self) -> None:
        poller = select.poll()
        port_events = 0
        if self.connected:
            port_events = select.POLLIN
            if self.outbuf:
                port_events |= select.POLLOUT
        else:
            port_events = select.POLLOUT  # the host connecting shows as writable
        poller.register(self.fd, port_events)
        poller.register(self.wake_r, select.POLLIN)
        backlog = len(self.outbuf) > HIGH_WATER
        for fd in self.by_fd:
            if not backlog:
                poller.register(fd, select.POLLIN)
        for proc in self.processes.values():
            if proc.stdin_fd is not None and proc.stdin_queue:
                poller.register(proc.stdin_fd, select.POLLOUT)
        timeout = 100 if (not self.connected or self.pending_exits()) else None
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            events = []
        for fd, mask in events:
            if fd == self.fd:
                self.on_port(mask)
            elif fd == self.wake_r:
                self.drain_wakeups()
            elif fd in self.by_fd:
                self.on_output(fd)
            else:
                self.on_stdin_writable(fd)
        self.reap()
        self.flush_exits()

    def on_port(self, mask: int) -> None:
        if not self.connected:
            if mask & select.POLLHUP:
                time.sleep(0.1)  # host still away: the port reports HUP until it connects
                return
            self.connected = True
            self.reader = FrameReader()
            self.send(encode_ctrl(self.ready_event()))
            return
        if mask & select.POLLOUT and self.outbuf:
            self.flush()
        if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                data = b""
            if not data:
                self.on_disconnect()
                return
            try:
                frames = self.reader.feed(data)
            except ProtocolError as exc:
                log(f"dropping connection: {exc}")
                self.on_disconnect()
                return
            for kind, channel, payload in frames:
                if kind == CTRL:
                    self.on_request(payload)
                else:
                    self.on_data(channel, payload)

    def on_disconnect(self) -> None:
        self.outbuf.clear()
        if self.is_port:
            self.connected = False
            time.sleep(0.1)
        else:
            self.running = False

    def flush(self) -> None:
        try:
            written = os.write(self.fd, self.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.on_disconnect()
            return
        del self.outbuf[:written]

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # ---------------------------------------------------------------- streams

    def on_output(self, fd: int) -> None:
        proc = self.by_fd[fd]
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO from a pty master once the slave side is gone
            data = b""
        channel = proc.outputs[fd]
        self.send(encode_data(channel, data))
        if not data:
            self.close_output(fd)

    def close_output(self, fd: int) -> None:
        proc = self.by_fd.pop(fd)
        del proc.outputs[fd]
        if fd != proc.tty_fd:
            os.close(fd)

    def on_data(self, channel: int, payload: bytes) -> None:
        for proc in self.processes.values():
            if proc.stdin_channel == channel and proc.stdin_fd is not None:
                if payload:
                    proc.stdin_queue += payload
                else:
                    proc.stdin_eof = True
                self.on_stdin_writable(proc.stdin_fd)
                return

    def on_stdin_writable(self, fd: int) -> None:
        for proc in self.processes.values():
            if proc.stdin_fd == fd:
                break
        else:
            return
        try:
            if proc.stdin_queue:
                written = os.write(fd, proc.stdin_queue)
                del proc.stdin_queue[:written]
        except BlockingIOError:
            return
        except OSError:  # the process closed its stdin: drop what it will never read
            proc.stdin_queue.clear()
            proc.stdin_eof = True
        if proc.stdin_eof and not proc.stdin_queue:
            if fd == proc.tty_fd:
                os.write(fd, b"\x04")  # end-of-file on a terminal is the EOF character
            else:
                os.close(fd)
            proc.stdin_fd = None

    # ---------------------------------------------------------------- processes

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for proc in self.processes.values():
                if proc.pid == pid and proc.status is None:
                    proc.status = os.waitstatus_to_exitcode(status)
                    proc.exited_at = time.monotonic()

    def pending_exits(self) -> bool:
        return any(p.status is not None for p in self.processes.values())

    def flush_exits(self) -> None:
        """Sends ``exit`` once a process's output is drained (or after a grace period,
        when a background child still holds its stdout open)."""
        now = time.monotonic()
        for name, proc in list(self.processes.items()):
            if proc.status is None:
                continue
            if proc.outputs and now - proc.exited_at < EXIT_GRACE:
                continue
            for fd in list(proc.outputs):
                self.send(encode_data(proc.outputs[fd], b""))
                self.close_output(fd)
            if proc.stdin_fd is not None and proc.stdin_fd != proc.tty_fd:
                os.close(proc.stdin_fd)
            if proc.tty_fd is not None:
                os.close(proc.tty_fd)
            code = proc.status
            status = {"code": code} if code >= 0 else {"signal": -code}
            self.send(encode_ctrl({"event": "exit", "proc": name, **status}))
            del self.processes[name]

    # ---------------------------------------------------------------- requests

    def on_request(self, message: dict) -> None:
        request_id = message.get("id")
        op = message.get("op", "")
        handler = getattr(self, "op_" + op, None)
        try:
            if handler is None:
                raise AgentError(f"unknown operation {op!r}")
            result = handler(message) or {}
            reply = {"id": request_id, "ok": True, **result}
        except AgentError as exc:
            reply = {"id": request_id, "error": str(exc)}
        except OSError as exc:
            reply = {"id": request_id, "error": f"{op}: {exc.strerror or exc}"}
        self.send(encode_ctrl(reply))

    def op_ping(self, message: dict) -> dict:
        return self.identity()

    def op_clone(self, message: dict) -> dict:
        """Makes a VM restored from a template its own: sets the wall clock to the host's,
        and mixes the host's fresh random bytes into the kernel's pool (credited with
        RNDADDENTROPY; a plain /dev/urandom write when refused) and reseeds the CRNG at
        once (RNDRESEEDCRNG), so no two clones of one template share random numbers."""
        if message.get("time"):
            time.clock_settime(time.CLOCK_REALTIME, float(message["time"]))
        seed = bytes.fromhex(message.get("seed", ""))
        if seed:
            fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
            try:
                try:
                    fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
                except OSError:
                    os.write(fd, seed)
                try:
                    fcntl.ioctl(fd, RNDRESEEDCRNG)
                except OSError as exc:
                    log(f"CRNG not reseeded: {exc}")
            finally:
                os.close(fd)
        return self.identity()

    def op_prepare(self, message: dict) -> None:
        """Mounts the container rootfs (and /proc, /sys, /dev in it) and sets the hostname."""
        root = message["rootfs"]
        plan = message.get("mounts", [])
        for entry in plan:  # what the rootfs is assembled from: shares, disks (by serial)
            if not entry.get("in_rootfs"):
                plan_mount(entry, entry["target"])
        os.makedirs(self.rootfs, exist_ok=True)
        options = root.get("options", "")
        if root.get("readonly"):
            options = ",".join(filter(None, [options, "ro"]))
        if root["fstype"] == "overlay":
            make_overlay_dirs(options)
        mount(resolve_source(root["source"]), self.rootfs, root["fstype"], options)
        for fstype, target in (("proc", "proc"), ("sysfs", "sys")):
            path = os.path.join(self.rootfs, target)
            if os.path.isdir(path):
                mount(fstype, path, fstype, "")
        dev = os.path.join(self.rootfs, "dev")
        if os.path.isdir(dev) and message.get("guest_devices"):  # the VM's own devices, all of them
            mount("devtmpfs", dev, "devtmpfs", "")
            os.makedirs(os.path.join(dev, "pts"), exist_ok=True)
            mount("devpts", os.path.join(dev, "pts"), "devpts", "newinstance,ptmxmode=0666,mode=620,gid=5")
        elif os.path.isdir(dev):
            populate_dev(dev)
        for entry in plan:  # the spec's mounts (volumes, tmpfs, mqueue...), in order
            if entry.get("in_rootfs"):
                plan_mount(entry, rootfs_path(self.rootfs, entry["target"], entry))
        if message.get("hostname"):
            with open("/proc/sys/kernel/hostname", "w") as f:
                f.write(message["hostname"])

    def op_exec(self, message: dict) -> dict:
        name = message["proc"]
        if name in self.processes:
            raise AgentError(f"process {name!r} already exists")
        proc = self.spawn(name, message)
        self.processes[name] = proc
        for fd in proc.outputs:
            self.by_fd[fd] = proc
        return {"pid": proc.pid}

    def spawn(self, name: str, message: dict) -> Process:
        """Forks the process into the rootfs with its stdio on pipes or a pty."""
        streams = message.get("streams", {})
        tty = bool(message.get("tty"))
        if tty:
            master, slave = open_pty(self.rootfs)
            set_winsize(master, message.get("rows", 0), message.get("cols", 0))
            child_fds = (slave, slave, slave)
            parent = {"outputs": {master: streams.get("stdout", 0)}, "stdin_fd": master}
            close_in_parent = [slave]
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            child_fds = (in_r, out_w, err_w)
            parent = {"outputs": {out_r: streams.get("stdout", 0), err_r: streams.get("stderr", 0)}, "stdin_fd": in_w}
            close_in_parent = [in_r, out_w, err_w]
        parent["stdin_channel"] = streams.get("stdin", 0)
        err_pipe_r, err_pipe_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                self.child(message, child_fds, tty, err_pipe_w)
            except BaseException as exc:  # noqa: BLE001 - report any failure to the parent
                os.write(err_pipe_w, describe(exc, message["args"][0]).encode())
            os._exit(127)
        os.close(err_pipe_w)
        for fd in close_in_parent:
            os.close(fd)
        failure = os.read(err_pipe_r, 4096)
        os.close(err_pipe_r)
        if failure:
            os.waitpid(pid, 0)
            for fd in set(parent["outputs"]) | {parent["stdin_fd"]}:
                os.close(fd)
            raise AgentError(failure.decode())
        for fd in set(parent["outputs"]) | {parent["stdin_fd"]}:
            os.set_blocking(fd, False)
        return Process(name, pid, parent, master if tty else None)

    def child(self, message: dict, fds: tuple, tty: bool, keep: int) -> None:
        """Runs in the forked child: becomes the container process or raises."""
        signal.set_wakeup_fd(-1)
        for signum in range(1, signal.NSIG):
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        if tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.closerange(3, keep)  # keeps only the error pipe, which is close-on-exec
        os.closerange(keep + 1, 1024)
        if self.rootfs != "/":
            os.chroot(self.rootfs)
            os.chdir("/")
        os.chdir(message.get("cwd") or "/")
        user = message.get("user") or {}
        if user:
            os.setgroups(user.get("additionalGids", []))
            os.setgid(user.get("gid", 0))
            os.setuid(user.get("uid", 0))
        env = dict(item.split("=", 1) for item in message.get("env", []) if "=" in item)
        os.execvpe(message["args"][0], message["args"], env)

    def lookup(self, name: str) -> Process:
        proc = self.processes.get(name)
        if proc is None or proc.status is not None:
            raise AgentError(f"process {name!r} is not running")
        return proc

    def op_signal(self, message: dict) -> None:
        signum = int(message["signal"])
        if message.get("all"):
            try:
                os.kill(-1, signum)  # from PID 1: every process but the agent itself
            except ProcessLookupError:
                pass
            return
        os.kill(self.lookup(message["proc"]).pid, signum)

    def op_winsize(self, message: dict) -> None:
        proc = self.lookup(message["proc"])
        if proc.tty_fd is None:
            raise AgentError(f"process {message['proc']!r} has no terminal")
        set_winsize(proc.tty_fd, message["rows"], message["cols"])

    def op_ps(self, message: dict) -> dict:
        """Every user process in the guest except the agent (kernel threads have no cmdline)."""
        processes = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().split(b"\0")
            except OSError:
                continue
            if cmdline == [b""]:
                continue
            processes.append({"pid": int(entry), "cmd": " ".join(a.decode(errors="replace") for a in cmdline if a)})
        return {"processes": sorted(processes, key=lambda p: p["pid"])}

    def op_stats(self, message: dict) -> dict:
        """CPU, memory and process figures of the whole guest (the VM is the container),
        plus the kernel's OOM-kill count, in runc's units (nanoseconds, bytes)."""
        tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
        cpus = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu"):
                    name, *ticks = line.split()
                    user, nice, system, _idle, _iowait, irq, softirq = (int(t) for t in ticks[:7])
                    cpus[name] = {"user": (user + nice) * tick_ns, "kernel": (system + irq + softirq) * tick_ns}
        total = cpus.pop("cpu")
        memory = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":")
                memory[key] = int(value.split()[0]) * 1024
        oom_kills = 0
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    oom_kills = int(line.split()[1])
        return {
            "cpu": {
                "total": total["user"] + total["kernel"],
                "user": total["user"],
                "kernel": total["kernel"],
                "percpu": [c["user"] + c["kernel"] for _, c in sorted(cpus.items(), key=lambda kv: int(kv[0][3:]))],
            },
            "memory": {"usage": memory["MemTotal"] - memory["MemAvailable"], "limit": memory["MemTotal"], "cache": memory.get("Cached", 0)},
            "pids": len(self.op_ps(message)["processes"]),
            "oom_kills": oom_kills,
        }

    def op_poweroff(self, message: dict) -> None:
        os.sync()
        self.flush()
        os.execv("/bin/busybox", ["poweroff", "-f"])

    def op_network(self, message: dict) -> None:
        """Brings up lo and the NICs the host wired (found by MAC) with the name, MTU,
        addresses and routes of the interfaces they mirror, then writes the /etc files
        the host sent (resolv.conf, hosts, hostname) into the container's rootfs."""
        link_up("lo")
        interfaces = message.get("interfaces", [])
        configure_nics(interfaces, wait_for_nics([i["mac"] for i in interfaces], NIC_TIMEOUT))
        for path, content in message.get("files", {}).items():
            write_rootfs_file(self.rootfs, path, content)


class AgentError(Exception):
    """A request that cannot be served; the message goes back to the host."""


def describe(exc: BaseException, program: str) -> str:
    """What went wrong starting ``program``, phrased as runc does."""
    if isinstance(exc, FileNotFoundError) and exc.filename in (None, program):
        return f'exec: "{program}": executable file not found in $PATH'
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f'exec: "{program}": {exc.strerror}{where}'
    return f'exec: "{program}": {exc}'


def busybox(*args: str) -> None:
    """Runs a busybox applet with ``args`` as its argv (never through a shell); raises
    AgentError with its output when it fails."""
    argv = ["/bin/busybox", *args]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.execv(argv[0], argv)
    os.close(w)
    output = b""
    while chunk := os.read(r, 4096):
        output += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise AgentError(f"{' '.join(args)}: {output.decode(errors='replace').strip()}")


MOUNT_FLAGS = {  # <sys/mount.h>: options that are flags, not filesystem data
    "ro": 1, "rw": 0, "nosuid": 2, "nodev": 4, "noexec": 8, "sync": 16, "remount": 32, "mand": 64,
    "dirsync": 128, "noatime": 1024, "nodiratime": 2048, "bind": 4096, "rbind": 4096 | 16384,
    "relatime": 1 << 21, "strictatime": 1 << 24, "suid": 0, "dev": 0, "exec": 0, "async": 0,
    "atime": 0, "diratime": 0, "norelatime": 0, "defaults": 0,
}
_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str, options: str) -> None:
    """mount(2) with ``mount -o`` style options (flags are split from filesystem data);
    a syscall, not a busybox process: under TCG each fork and exec costs tens of ms."""
    flags, data = 0, []
    for option in filter(None, options.split(",")):
        if option in MOUNT_FLAGS:
            flags |= MOUNT_FLAGS[option]
        else:
            data.append(option)
    joined = ",".join(data).encode() or None
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags), joined) != 0:
        error = ctypes.get_errno()
        raise AgentError(f"mount {source} on {target} ({fstype}): {os.strerror(error)}")


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


DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "core": "/proc/kcore"}


def populate_dev(path: str) -> None:
    """The container's /dev, as runc makes it: a tmpfs with the standard nodes, its own
    devpts and shm, and none of the guest's devices (the agent's port, the disks)."""
    mount("tmpfs", path, "tmpfs", "nosuid,mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        os.mknod(os.path.join(path, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(os.path.join(path, name), 0o666)
    for name, target in DEV_LINKS.items():
        os.symlink(target, os.path.join(path, name))
    for sub in ("pts", "shm", "mqueue"):
        os.mkdir(os.path.join(path, sub))
    os.chmod(os.path.join(path, "shm"), 0o1777)
    mount("devpts", os.path.join(path, "pts"), "devpts", "newinstance,ptmxmode=0666,mode=620,gid=5")
    mount("shm", os.path.join(path, "shm"), "tmpfs", "nosuid,nodev,noexec,mode=1777,size=65536k")


def set_winsize(fd: int, rows: int, cols: int) -> None:
    if rows and cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def find_port() -> str:
    """The /dev node of the virtio-serial port the host named ``org.runv.agent``."""
    base = "/sys/class/virtio-ports"
    for _ in range(100):
        if os.path.isdir(base):
            for port in sorted(os.listdir(base)):
                try:
                    with open(f"{base}/{port}/name") as f:
                        if f.read().strip() == PORT_NAME:
                            return f"/dev/{port}"
                except OSError:
                    continue
        time.sleep(0.05)
    raise SystemExit(f"runv-agent: no virtio-serial port named {PORT_NAME}")


AGENT_ARG = "runv.agent="  # e.g. runv.agent=/dev/ttyS1: a serial tty instead of virtio-serial (kvmtool)


def serial_channel(args: list) -> str | None:
    """The tty the kernel command line names with ``runv.agent=``, or None."""
    for arg in args:
        if arg.startswith(AGENT_ARG):
            return arg[len(AGENT_ARG):]
    return None


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


def main() -> None:
    global DEBUG
    with open("/proc/cmdline") as f:
        args = f.read().split()
    DEBUG = "runv.debug" in args
    path = serial_channel(args) or find_port()
    log(f"serving {path}")
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    if os.isatty(fd):
        make_raw(fd)
    Agent(fd, is_port=True).run()


# ---------------------------------------------------------------- networking (op_network)

NIC_TIMEOUT = 15.0  # seconds a hot-plugged NIC may take to show up in /sys/class/net
SYS_NET = "/sys/class/net"


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # <linux/sockios.h>, <net/if.h>
IFREQ_FLAGS = struct.Struct("16sh14x")


def link_up(name: str) -> None:
    """Sets an interface up with two ioctls (no busybox process: a fork costs tens of ms under TCG)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _, flags = IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(name.encode(), 0)))
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(name.encode(), flags | IFF_UP))


def nic_macs() -> dict:
    """MAC address -> interface name, for every interface the guest kernel has."""
    found = {}
    for name in os.listdir(SYS_NET) if os.path.isdir(SYS_NET) else ():
        try:
            with open(f"{SYS_NET}/{name}/address") as f:
                found[f.read().strip().lower()] = name
        except OSError:
            continue
    return found


def wait_for_nics(macs: list, timeout: float) -> dict:
    """MAC -> current name of each NIC in ``macs``, waiting for hot-plugged ones to appear."""
    wanted = {mac.lower() for mac in macs}
    deadline = time.monotonic() + timeout
    while True:
        found = nic_macs()
        missing = wanted - set(found)
        if not missing:
            return {mac: found[mac] for mac in wanted}
        if time.monotonic() > deadline:
            raise AgentError(f"no network interface with MAC {', '.join(sorted(missing))} appeared in the guest")
        time.sleep(0.05)


def configure_nics(interfaces: list, names: dict) -> None:
    """Renames each NIC to its interface's name (through a temporary name, so two NICs
    may swap names), then sets MTU, link up, addresses and routes."""
    current = {}
    for index, iface in enumerate(interfaces):
        name = names[iface["mac"].lower()]
        if name != iface["name"]:
            busybox("ip", "link", "set", "dev", name, "name", f"runvtmp{index}")
            name = f"runvtmp{index}"
        current[iface["name"]] = name
    for iface in interfaces:
        name = iface["name"]
        if current[name] != name:
            busybox("ip", "link", "set", "dev", current[name], "name", name)
        busybox("ip", "link", "set", "dev", name, "mtu", str(int(iface["mtu"])))
        busybox("ip", "link", "set", "dev", name, "up")
        for addr in iface.get("addresses", []):
            family = "-6" if addr["family"] == 6 else "-4"
            busybox("ip", family, "addr", "add", f"{addr['address']}/{int(addr['prefixlen'])}", "dev", name)
        for route in iface.get("routes", []):
            argv = ["ip", "-6" if route["family"] == 6 else "-4", "route", "replace", route["dst"]]
            if route.get("gateway"):
                argv += ["via", route["gateway"]]
            argv += ["dev", name]
            if route.get("metric") is not None:
                argv += ["metric", str(int(route["metric"]))]
            busybox(*argv)


def write_rootfs_file(rootfs: str, path: str, content: str) -> None:
    """Writes ``content`` to ``path`` inside the rootfs, refusing to leave it through
    ``..`` or a symlinked directory; a symlink at ``path`` itself is replaced."""
    relative = os.path.normpath("/" + path).lstrip("/")
    root = os.path.realpath(rootfs)
    parent = os.path.realpath(os.path.join(root, os.path.dirname(relative)))
    if not relative or (parent != root and not parent.startswith(root.rstrip("/") + "/")):
        raise AgentError(f"cannot write {path}: it leads out of the container's rootfs")
    os.makedirs(parent, exist_ok=True)
    target = os.path.join(parent, os.path.basename(relative))
    if os.path.islink(target):
        os.unlink(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------- storage (op_prepare's mount plan)

SERIAL_PREFIX = "serial:"  # a mount source naming a virtio-blk disk by its serial
DISK_TIMEOUT = 10.0


def disk_by_serial(serial: str, timeout: float = DISK_TIMEOUT) -> str:
    """The /dev node of the virtio-blk disk whose serial is ``serial``."""
    deadline = time.monotonic() + timeout
    while True:
        for name in sorted(os.listdir("/sys/block")):
            try:
                with open(f"/sys/block/{name}/serial") as f:
                    if f.read().strip() == serial:
                        if os.path.exists(f"/dev/{name}"):
                            return f"/dev/{name}"
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise AgentError(f"no disk with serial {serial!r} in the guest")
        time.sleep(0.05)


def resolve_source(source: str) -> str:
    return disk_by_serial(source[len(SERIAL_PREFIX):]) if source.startswith(SERIAL_PREFIX) else source


def make_overlay_dirs(options: str) -> None:
    """overlayfs wants its upperdir and workdir to exist (on a fresh upper disk they do not)."""
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key in ("upperdir", "workdir") and value:
            os.makedirs(value, exist_ok=True)


def rootfs_path(rootfs: str, path: str, entry: dict) -> str:
    """``path`` inside the rootfs with symlinks resolved as the container would see them
    (relative to its root, never leading out of it); missing parts are created, the last
    one as a file when the mount's source is a file, else as a directory."""
    root = os.path.realpath(rootfs)
    parts = [p for p in os.path.normpath("/" + path).split("/") if p]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise AgentError(f"cannot mount on {path}: too many symlinks")
            link = os.readlink(candidate)
            parts[:0] = [p for p in link.split("/") if p]
            current = root if link.startswith("/") else current
            continue
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        current = candidate
    if not os.path.lexists(current):
        source_is_file = entry.get("fstype") == "bind" and os.path.isfile(resolve_source(entry["source"]))
        if source_is_file:
            os.makedirs(os.path.dirname(current), exist_ok=True)
            os.close(os.open(current, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        else:
            os.makedirs(current, exist_ok=True)
    return current


def plan_mount(entry: dict, target: str) -> None:
    """One entry of the mount plan at ``target`` (an absolute guest path)."""
    source = resolve_source(entry["source"])
    options = entry.get("options", "")
    if not entry.get("in_rootfs"):
        os.makedirs(target, exist_ok=True)
    if entry["fstype"] == "bind":
        mount(source, target, "none", "bind")
        if entry.get("readonly") or options:  # bind flags (ro, nosuid...) need a remount
            flags = ",".join(filter(None, ["remount", "bind", "ro" if entry.get("readonly") else "", options]))
            mount(source, target, "none", flags)
        return
    if entry.get("readonly"):
        options = ",".join(filter(None, [options, "ro"]))
    mount(source, target, entry["fstype"], options)


if __name__ == "__main__":
    sys.exit(main())

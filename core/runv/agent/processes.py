"""Starting a process the host asks for: fork, the child's set-up in order, exec, and the exec and signal requests."""

import fcntl
import os
import signal
import socket
import termios
import warnings  # noqa: F401  os.execvpe imports it in the child, chrooted where the stdlib is not

from runv.agent.confine import apply_process, run_start_hooks
from runv.agent.errors import RequestError
from runv.agent.terminal import open_pty, receive_master, send_master, set_winsize


class GuestProcess:
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
        self.container = None  # the id of the container it runs in (ProcessTable.start)


def spawn(rootfs: str, name: str, message: dict, container=None) -> GuestProcess:
    """Forks the process into the rootfs with its stdio on pipes or a pty; a failure in
    the child before exec comes back through a close-on-exec pipe as RequestError. With
    ``container`` (a runv.agent.confine.GuestContainer: the agent in a VM) the process gets
    the container's namespaces, a new set for ``init``, the init's for any other."""
    streams = message.get("streams", {})
    tty = bool(message.get("tty"))
    pty = ours = None  # in a VM the process opens its pty itself and sends the master over ``ours``
    if tty and container is not None:
        ours, pty = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        child_fds, close_in_parent = None, []
        parent = {"outputs": {}, "stdin_fd": None}
    elif tty:
        master, slave = open_pty(os.path.join(rootfs, "dev/pts/ptmx") if rootfs != "/" else "")
        set_winsize(master, message.get("rows", 0), message.get("cols", 0))
        child_fds, close_in_parent = (slave, slave, slave), [slave]
        parent = {"outputs": {master: streams.get("stdout", 0)}, "stdin_fd": master}
    else:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_fds, close_in_parent = (in_r, out_w, err_w), [in_r, out_w, err_w]
        parent = {"outputs": {out_r: streams.get("stdout", 0), err_r: streams.get("stderr", 0)}, "stdin_fd": in_w}
    parent["stdin_channel"] = streams.get("stdin", 0)

    def release() -> None:  # the parent's ends, on a failure
        for fd in set(parent["outputs"]) | ({parent["stdin_fd"]} - {None}):
            os.close(fd)
        if ours is not None:
            ours.close()

    err_pipe_r, err_pipe_w = os.pipe2(os.O_CLOEXEC)
    init = bool(message.get("init"))
    if container is not None:
        try:
            container.before_fork(init)
        except BaseException:
            for fd in (err_pipe_r, err_pipe_w, *close_in_parent):
                os.close(fd)
            if pty is not None:
                pty.close()
            release()
            raise
    pid = os.fork()
    if pid == 0:
        try:
            child(rootfs, message, child_fds, tty, err_pipe_w, container, pty)
        except BaseException as exc:  # noqa: BLE001 - report any failure to the parent
            os.write(err_pipe_w, describe(exc, message["args"][0]).encode())
        os._exit(127)
    os.close(err_pipe_w)
    for fd in close_in_parent:
        os.close(fd)
    if pty is not None:
        pty.close()
    if container is not None:
        container.after_fork(init, None)
        try:
            pid = container.handshake(init, pid)  # with a user namespace: the init its child forked
        except BaseException:
            os.close(err_pipe_r)
            release()
            raise
    if ours is not None:
        master = receive_master(ours)  # None: it failed first, and says why on the error pipe
        ours = None
        if master is not None:
            parent["outputs"], parent["stdin_fd"] = {master: streams.get("stdout", 0)}, master
    failure = os.read(err_pipe_r, 4096)
    os.close(err_pipe_r)
    if failure:
        os.waitpid(pid, 0)
        release()
        raise RequestError(failure.decode())
    if parent["stdin_fd"] is None:
        os.waitpid(pid, 0)
        raise RequestError("container set-up: the process sent no terminal")
    if container is not None and init:
        container.after_fork(init, pid)  # it has exec'd: its namespaces are the container's
    for fd in set(parent["outputs"]) | {parent["stdin_fd"]}:
        os.set_blocking(fd, False)
    return GuestProcess(name, pid, parent, parent["stdin_fd"] if tty else None)


def child(rootfs: str, message: dict, fds: tuple | None, tty: bool, keep: int, container=None, pty=None) -> None:
    """Runs in the forked child: becomes the container process or raises. The steps run
    in this order, each relying on the ones before; ``keep`` is the error pipe's fd. In a
    VM a terminal is opened once the container's mounts are made, and its master sent back
    over ``pty`` (``fds`` is then None)."""
    reset_signals()
    if container is None:
        take_stdio(fds, tty)
        close_inherited_fds(keep)
        enter_rootfs(rootfs, message.get("cwd") or "/")
        set_user(message.get("user") or {})
    else:
        try:
            container.join(bool(message.get("init")))  # first: the init of a user namespace is its child
            if pty is None:
                take_stdio(fds, tty)
            container.enter(bool(message.get("init")))
            if pty is not None:
                slave = send_master(pty, message.get("rows", 0), message.get("cols", 0))
                take_stdio((slave, slave, slave), tty)
            close_inherited_fds(keep)
            apply_process(message, container.config.get("seccomp"))
            if message.get("init") and message.get("startContainer"):
                run_start_hooks(message["startContainer"], message.get("state") or {})
        except OSError as exc:
            if exc.filename is None and not isinstance(exc, FileNotFoundError):
                raise RequestError(f"container set-up: {exc.strerror or exc}") from None
            raise
    env = dict(item.split("=", 1) for item in message.get("env", []) if "=" in item)
    os.execvpe(message["args"][0], message["args"], env)


def reset_signals() -> None:
    """Every disposition back to default and no wakeup fd: the agent's handlers are its own."""
    signal.set_wakeup_fd(-1)
    for signum in range(1, signal.NSIG):
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def take_stdio(fds: tuple, tty: bool) -> None:
    """A session of its own, ``fds`` as fds 0-2 and, with a tty, it as the controlling terminal."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    if tty:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def close_inherited_fds(keep: int) -> None:
    """Closes every fd above stdio but ``keep`` (the error pipe, which is close-on-exec)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, 1024)


def enter_rootfs(rootfs: str, cwd: str) -> None:
    """chroot into the rootfs (not when it is "/": the agent on the host), then to ``cwd``."""
    if rootfs != "/":
        os.chroot(rootfs)
        os.chdir("/")
    os.chdir(cwd)


def set_user(user: dict) -> None:
    """Supplementary groups, gid, then uid (last: it gives up the right to change the others)."""
    if user:
        os.setgroups(user.get("additionalGids", []))
        os.setgid(user.get("gid", 0))
        os.setuid(user.get("uid", 0))


def describe(exc: BaseException, program: str) -> str:
    """What went wrong starting ``program``, phrased as runc does."""
    if isinstance(exc, RequestError):
        return str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename in (None, program):
        return f'exec: "{program}": executable file not found in $PATH'
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f'exec: "{program}": {exc.strerror}{where}'
    return f'exec: "{program}": {exc}'


def op_exec(agent, message: dict) -> dict:
    return {"pid": agent.processes.start(message["proc"], message).pid}


def op_signal(agent, message: dict) -> None:
    """``signal``: to ``proc``, or with ``all`` to every process of its container (in its
    guest cgroup; on the host, the ones the agent started there), never another container's."""
    from runv.agent.pods import signal_container

    signum = int(message["signal"])
    if not message.get("all"):
        os.kill(agent.processes.lookup(message["proc"]).pid, signum)
        return
    proc = agent.processes.by_name.get(message.get("proc"))
    signal_container(agent, proc.container if proc else agent.processes.resolve(message.get("container")), signum)

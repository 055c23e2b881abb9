"""The container's confinement inside the guest, in runc's order (libcontainer's
rootfs_linux.go, standard_init_linux.go, setns_init_linux.go).

The container's process (``init``):
 1. joins its cgroup (v2, made by ``prepare``), then ``unshare``s mount, UTS, IPC and
    cgroup namespaces; its PID namespace was made by the agent around the fork, so it
    is PID 1 of its own;
 2. makes every mount private (or ``rootfsPropagation``), mounts what belongs to its new
    namespaces (``proc`` of its PID namespace, ``mqueue``, ``cgroup``), binds the rootfs
    on itself, moves the rootfs over the initramfs' ``/`` and ``pivot_root``s into the
    bind (DESIGN.md 3b: pivot_root from the initramfs is EINVAL; from a chroot in a mount
    with a parent it works), and detaches the old root: the agent's files, ``/dev/vport*``
    and the guest's devtmpfs are not reachable, even with ``..`` after a chroot;
 3. ``linux.devices``, ``linux.sysctl``, ``maskedPaths``, ``readonlyPaths``, propagation;
then, as every exec'd process (which ``setns``es into the init's namespaces and cgroup
instead of 1-3): ``oomScoreAdj``, ``rlimits``, ``umask``, the bounding set, the user
(keeping capabilities across setuid), the other four capability sets, the working
directory, ``noNewPrivileges``; the caller execs last.
"""

import ctypes
import errno
import json
import os
import stat
import time

from runv.agent import mounts
from runv.agent import seccomp as seccomp_filter
from runv.agent.cgroups import join_cgroup, make_cgroup
from runv.agent.errors import AgentError
from runv.agent.mounts import mount, plan_mount, rootfs_path
from runv.agent.tables import CAP_NUMBERS, NAMESPACES, RLIMIT_NUMBERS

_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 8, 32, 4096, 8192, 16384
PROPAGATION = {"private": 1 << 18, "slave": 1 << 19, "shared": 1 << 20, "unbindable": 1 << 17}
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64
PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 24, 38, 47, 2
CAP_VERSION_3 = 0x20080522
JOINED = ("ipc", "uts", "cgroup", "mnt")  # setns order for exec: the mount namespace last (it moves our root)


class _Rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def raw_mount(source, target: str, fstype, flags: int, what: str) -> None:
    enc = (lambda v: v.encode() if isinstance(v, str) else v)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None), what)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, kind: str) -> None:
    _check(_libc.setns(fd, NAMESPACES[kind]), f"setns {kind}")


class Container:
    """One container's confinement: what ``prepare`` gave, its cgroup, its init's namespaces."""

    def __init__(self, rootfs: str, config: dict, deferred: list) -> None:
        self.rootfs = rootfs
        self.config = config
        self.deferred = deferred  # mounts of the container's own namespaces: proc, mqueue, cgroup
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.ns_fds = {}  # the init's namespaces, opened once it runs
        self.cgroup = make_cgroup(config.get("resources") or {})
        if config.get("seccomp"):
            seccomp_filter.library()  # loaded here: a child after pivot_root sees only the container's files

    # ------------------------------------------------- the agent's side of the fork

    def before_fork(self, init: bool) -> None:
        """The next child's PID namespace: a new one for the init, the init's for an exec."""
        if init:
            if self.ns_fds:
                raise AgentError("the container's process already runs")
            unshare(NAMESPACES["pid"])
        else:
            if not self.ns_fds:
                raise AgentError("the container's process is not running")
            setns(self.ns_fds["pid"], "pid")

    def after_fork(self, init: bool, pid: int | None) -> None:
        """Back to the agent's own PID namespace for its next children; the init's namespaces noted."""
        setns(self.own_pid_ns, "pid")
        if init and pid:
            for kind in (*JOINED, "pid"):
                self.ns_fds[kind] = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)

    # ---------------------------------------------------------- the child's steps

    def enter(self, init: bool) -> None:
        """Steps 1-3 (init) or joining them (exec); the caller then calls ``apply_process``."""
        join_cgroup(self.cgroup)
        if not init:
            for kind in JOINED:
                setns(self.ns_fds[kind], kind)
            return
        unshare(NAMESPACES["mnt"] | NAMESPACES["uts"] | NAMESPACES["ipc"] | NAMESPACES["cgroup"])
        raw_mount(None, "/", None, MS_REC | PROPAGATION["private"], "making / private")
        self.pivot()
        mount("proc", "/proc", "proc", "nosuid,nodev,noexec")
        for entry in self.deferred:
            entry = dict(entry, fstype="cgroup2" if entry["fstype"] == "cgroup" else entry["fstype"])
            plan_mount(entry, rootfs_path("/", entry["target"], entry))
        make_devices(self.config.get("devices") or [])
        write_sysctls(self.config.get("sysctl") or {})
        for path in self.config.get("maskedPaths") or []:
            mask_path(path)
        for path in self.config.get("readonlyPaths") or []:
            readonly_path(path)
        propagation = self.config.get("rootfsPropagation") or "rprivate"
        if propagation != "rprivate":
            kind = propagation.lstrip("r") if propagation.startswith("r") else propagation
            rec = MS_REC if propagation.startswith("r") else 0
            raw_mount(None, "/", None, rec | PROPAGATION[kind], f"rootfsPropagation {propagation}")

    def pivot(self) -> None:
        """The rootfs over ``/`` of the (copied) initramfs, then pivot_root into its bind."""
        lower = os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY)
        raw_mount(self.rootfs, self.rootfs, None, MS_BIND | MS_REC, f"binding {self.rootfs}")
        upper = os.open(self.rootfs, os.O_RDONLY | os.O_DIRECTORY)
        raw_mount(f"/proc/self/fd/{lower}", "/", None, MS_MOVE, f"moving {self.rootfs} to /")
        os.fchdir(lower)
        os.chroot(".")
        os.fchdir(upper)
        _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
        os.chdir("/")
        os.close(lower)
        os.close(upper)


def op_prepare(agent, message: dict) -> None:
    """``prepare``: the rootfs and its mounts (runv.agent.mounts), then, in a VM, the
    container whose processes get namespaces, a pivot_root and the rest of the spec."""
    mounts.op_prepare(agent, message)
    if agent.confine:
        config = message.get("confinement") or {}
        agent.processes.container = Container(agent.rootfs, config, agent.deferred_mounts)


def make_devices(devices: list) -> None:
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    for dev in devices:
        path = dev["path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        try:
            os.mknod(path, kinds[dev["type"]] | 0o600, os.makedev(dev.get("major", 0), dev.get("minor", 0)))
            os.chmod(path, dev.get("fileMode", 0o666))
            os.chown(path, dev.get("uid", 0), dev.get("gid", 0))
        except OSError as exc:
            raise AgentError(f"linux.devices: cannot create {path}: {exc.strerror}") from None


def write_sysctls(sysctls: dict) -> None:
    for key, value in sysctls.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            reason = "the guest kernel has no such sysctl" if exc.errno == errno.ENOENT else exc.strerror
            raise AgentError(f"linux.sysctl: {key}={value}: {reason}") from None


def mask_path(path: str) -> None:
    """runc's maskPath: /dev/null over a file, an empty read-only tmpfs over a directory."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            mount("tmpfs", path, "tmpfs", "ro,size=0k")
        else:
            raw_mount("/dev/null", path, None, MS_BIND, f"masking {path}")
    except (OSError, AgentError) as exc:
        if not os.path.lexists(path) or getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR):
            return
        raise AgentError(f"linux.maskedPaths: {path}: {exc}") from None


def readonly_path(path: str) -> None:
    """runc's readonlyPath: a bind of the path on itself, remounted read-only (keeping its flags)."""
    if not os.path.lexists(path):
        return
    raw_mount(path, path, None, MS_BIND | MS_REC, f"binding {path}")
    flags = os.statvfs(path).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
    raw_mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags, f"remounting {path} read-only")


# ------------------------------------------------------------------ the process spec


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAP_NUMBERS) - 1


def cap_mask(names: list) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAP_NUMBERS[name]
    return mask


def apply_process(message: dict, seccomp=None) -> None:
    """oomScoreAdj, rlimits, umask, bounding set, user, capabilities, cwd, noNewPrivileges,
    seccomp (``linux.seccomp``): last, or, without noNewPrivileges, before the capabilities
    go (loading a filter then needs CAP_SYS_ADMIN), as runc does."""
    nnp = bool(message.get("noNewPrivileges"))
    if seccomp and not nnp:
        seccomp_filter.load(seccomp)
    if message.get("oomScoreAdj") is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(message["oomScoreAdj"]))
    for limit in message.get("rlimits") or []:
        value = _Rlimit(limit["soft"], limit["hard"])
        if _libc.prlimit(0, RLIMIT_NUMBERS[limit["type"]], ctypes.byref(value), None) != 0:
            raise AgentError(f"process.rlimits: {limit['type']}: {os.strerror(ctypes.get_errno())}")
    if message.get("umask") is not None:
        os.umask(message["umask"])
    caps = message.get("capabilities")
    user = message.get("user") or {}
    if caps is not None:
        top = last_cap()
        for name in (n for s in caps.values() for n in s):
            if CAP_NUMBERS[name] > top:
                raise AgentError(f"process.capabilities: the guest kernel has no {name}")
        bounding = cap_mask(caps.get("bounding", []))
        for number in range(top + 1):
            if not bounding & (1 << number):
                _check(_libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), "dropping the bounding set")
        _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keeping capabilities")
    os.setgroups(user.get("additionalGids", []))
    os.setgid(user.get("gid", 0))
    os.setuid(user.get("uid", 0))
    if caps is not None:
        _check(_libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "keeping capabilities")
        sets = {key: cap_mask(caps.get(key, [])) for key in ("effective", "permitted", "inheritable")}
        data = (_CapData * 2)()
        for i in (0, 1):
            data[i].effective, data[i].permitted, data[i].inheritable = (
                (sets[k] >> (32 * i)) & 0xFFFFFFFF for k in ("effective", "permitted", "inheritable"))
        _check(_libc.capset(ctypes.byref(_CapHeader(CAP_VERSION_3, 0)), data), "capset")
        for name in caps.get("ambient", []):  # as runc: one not also inheritable and permitted is not raised
            _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NUMBERS[name], 0, 0)
    os.chdir(message.get("cwd") or "/")
    if nnp:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "noNewPrivileges")
        if seccomp:
            seccomp_filter.load(seccomp)


def run_start_hooks(hooks: list, state: dict) -> None:
    """``startContainer`` hooks, in the container (after pivot_root and the process spec,
    before the user's program, as runc runs them): each gets the state on stdin and must
    exit 0 within its ``timeout``; a failure stops the start with one line."""
    for index, hook in enumerate(hooks):
        where = f"hooks.startContainer[{index}] {hook['path']}"
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(reader, 0)
                env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
                os.execve(hook["path"], hook.get("args") or [hook["path"]], env)
            finally:
                os._exit(127)
        os.close(reader)
        try:
            os.write(writer, json.dumps({**state, "pid": os.getpid()}).encode())
        except OSError:
            pass  # a hook that does not read its state
        os.close(writer)
        deadline = time.monotonic() + (hook.get("timeout") or 3600)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AgentError(f"{where}: timed out after {hook.get('timeout')} s")
            time.sleep(0.01)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise AgentError(f"{where}: exit status {code}" if code > 0 else f"{where}: killed by signal {-code}")

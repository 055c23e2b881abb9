"""The container's confinement inside the guest, in runc's order (libcontainer's nsexec.c,
init_linux.go, standard_init_linux.go, setns_init_linux.go).

The container's process (``init``):
 1. joins its cgroup (v2, made by ``prepare``); with a user namespace (``linux.namespaces``
    has ``user``) it ``unshare``s it, the agent (its parent) writes ``uid_map``/``gid_map``
    (a socket handshake, as runc's parent writes the maps), it becomes root there (uid 0),
    ``unshare``s PID, mount, UTS and IPC namespaces (owned by the user namespace) and forks
    the init, which takes gid 0 and no groups (runc's nsexec stages); without one the agent
    made the PID namespace around the fork. It is PID 1 of its own;
 2. ``unshare``s the rest of mount, UTS, IPC and cgroup namespaces and makes every mount
    private;
 3. its filesystem: the spec's mounts in spec order, devices, pivot_root, sysctl, paths
    (runv.agent.rootfs);
then, as every exec'd process (which ``setns``es into the init's namespaces, the user
namespace first, instead of 1-3): ``oomScoreAdj``, ``rlimits``, ``umask``, the bounding
set, the user (keeping capabilities across setuid), the other four capability sets, the
working directory, ``noNewPrivileges``; the caller execs last.
"""

import ctypes
import json
import os
import socket
import time

from runv.agent import mounts, rootfs
from runv.agent import seccomp as seccomp_filter
from runv.agent.cgroups import join_cgroup, make_cgroup
from runv.agent.errors import RequestError
from runv.agent.mounts import MS_REC, PROPAGATION, check, raw_mount
from runv.agent.tables import CAP_NUMBERS, NAMESPACES, RLIMIT_NUMBERS

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 24, 38, 47, 2
CAP_VERSION_3 = 0x20080522
JOINED = ("ipc", "uts", "cgroup", "mnt")  # setns order for exec: the mount namespace last (it moves our root)
OWN = NAMESPACES["mnt"] | NAMESPACES["uts"] | NAMESPACES["ipc"] | NAMESPACES["cgroup"]
MAPS = (("uid_map", "uidMappings"), ("gid_map", "gidMappings"))


class _Rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]



def unshare(flags: int) -> None:
    check(_libc.unshare(flags), "unshare")


def setns(fd: int, kind: str) -> None:
    check(_libc.setns(fd, NAMESPACES[kind]), f"setns {kind}")


def map_lines(mappings: list) -> str:
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)


class GuestContainer:
    """One container's confinement: what ``prepare`` gave, its cgroup, its init's namespaces."""

    def __init__(self, root: str, config: dict, binds: list, prepare: dict) -> None:
        self.rootfs = root  # the path (``rootfs`` is runv.agent.rootfs here)
        self.config = config
        self.binds = binds  # the staged sources of the spec's bind mounts (runv.agent.mounts.stage_binds)
        self.readonly = bool(prepare["rootfs"].get("readonly"))
        self.guest_devices = bool(prepare.get("guest_devices"))
        self.userns = config.get("userns")  # {"uidMappings", "gidMappings"} or None
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.ns_fds = {}  # the init's namespaces, opened once it runs
        self.sync = None  # the init's end and ours of the user-namespace handshake
        self.cgroup = make_cgroup(config.get("resources") or {}, config.get("id", ""))
        sysctls = config.get("sysctl") or {}
        rootfs.write_sysctls({key: value for key, value in sysctls.items() if rootfs.is_vm_wide(key)})

    # ------------------------------------------------- the agent's side of the fork

    def before_fork(self, init: bool) -> None:
        """The next child's PID namespace: a new one for the init (made by the init itself
        with a user namespace), the init's for an exec."""
        if init:
            if self.ns_fds:
                raise RequestError("the container's process already runs")
            if self.userns:
                self.sync = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            else:
                unshare(NAMESPACES["pid"])
        else:
            if not self.ns_fds:
                raise RequestError("the container's process is not running")
            setns(self.ns_fds["pid"], "pid")

    def after_fork(self, init: bool, pid: int | None) -> None:
        """Back to the agent's own PID namespace for its next children; the init's namespaces noted."""
        setns(self.own_pid_ns, "pid")
        if init and pid:
            for kind in (*JOINED, "pid", *(("user",) if self.userns else ())):
                self.ns_fds[kind] = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)

    def handshake(self, init: bool, pid: int) -> int:
        """With a user namespace, the parent's half: the maps written for the child ``pid``
        once it has unshared it, then the pid of the init it forks (our child once ``pid``
        exits). Without one (or for an exec) ``pid`` is the process."""
        if not (init and self.userns):
            return pid
        child_end, ours = self.sync
        self.sync = None
        child_end.close()
        try:
            if ours.recv(16) != b"userns":
                return pid  # it failed before: its error is on the error pipe
            try:
                self.write_maps(pid)
            except RequestError:
                ours.close()  # the child sees no "go" and exits
                os.waitpid(pid, 0)
                raise
            ours.send(b"go")
            answer = ours.recv(16)
        finally:
            ours.close()
        if not answer.isdigit():
            return pid  # it failed after the maps: its error is on the error pipe
        os.waitpid(pid, 0)
        return int(answer)

    def write_maps(self, pid: int) -> None:
        for name, key in MAPS:
            try:
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(map_lines(self.userns[key]))
            except OSError as exc:
                ranges = self.userns[key]
                shown = ", ".join(json.dumps(m) for m in ranges[:2]) + (", ..." if len(ranges) > 2 else "")
                raise RequestError(f"linux.{key}: the guest kernel refuses these {len(ranges)} ranges "
                                 f"[{shown}]: {exc.strerror}") from None

    # ---------------------------------------------------------- the child's steps

    def join(self, init: bool) -> None:
        """Step 1: the cgroup, and for an init with a user namespace, that namespace (this
        child then returns as its own child, the init; its stdio and session come after)."""
        join_cgroup(self.cgroup)
        if init and self.userns:
            self.enter_userns()

    def enter(self, init: bool) -> None:
        """Steps 2-3 (init) or joining the init's namespaces (exec), after :meth:`join`;
        the caller then calls ``apply_process``."""
        if not init:
            for kind in (("user",) if self.userns else ()) + JOINED:
                setns(self.ns_fds[kind], kind)
            return
        unshare(NAMESPACES["cgroup"] if self.userns else OWN)  # with a user namespace the others came before the fork
        raw_mount(None, "/", None, MS_REC | PROPAGATION["private"], "making / private")
        rootfs.build(self.rootfs, self.config, self.binds, bool(self.userns), self.guest_devices, self.cgroup)
        rootfs.finish(self.config, self.readonly)

    def enter_userns(self) -> None:
        """The child's half of the handshake; returns in the init (PID 1 of a PID namespace
        owned by the new user namespace, root there), its parent exits."""
        child_end, ours = self.sync
        ours.close()
        unshare(NAMESPACES["user"])
        child_end.send(b"userns")
        if child_end.recv(16) != b"go":
            os._exit(1)  # the agent refused the maps and says why
        os.setresuid(0, 0, 0)  # runc's nsexec: root in the namespace (the gid only in the init), then
        unshare(NAMESPACES["pid"] | OWN & ~NAMESPACES["cgroup"])  # the namespaces; cgroup's in the init
        pid = os.fork()
        if pid:
            child_end.send(str(pid).encode())
            os._exit(0)
        child_end.close()
        os.setgid(0)
        os.setgroups([])


def op_prepare(agent, message: dict) -> None:
    """``prepare``: the rootfs (runv.agent.mounts), then, in a VM, the container whose
    processes get namespaces, its mounts in spec order, a pivot_root and the rest of the spec.
    The first container prepared is the VM's own; a later one (``container``: its id) is a
    pod member, with its rootfs under /run/runv/containers/<id> (runv.agent.pods)."""
    from runv.agent.pods import CONTAINERS

    table = agent.processes
    config = message.get("confinement") or {}
    cid = message.get("container") or config.get("id") or ""
    if cid in table.roots:
        raise RequestError(f"container {cid} is already prepared in this VM")
    member = cid if table.primary is not None else None
    root = mounts.staged(agent, f"{CONTAINERS}/{cid}/rootfs") if member else agent.rootfs
    binds = mounts.op_prepare(agent, message, root, member)
    table.add(cid, root, GuestContainer(root, config, binds, message) if agent.confine else None)


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
            raise RequestError(f"process.rlimits: {limit['type']}: {os.strerror(ctypes.get_errno())}")
    if message.get("umask") is not None:
        os.umask(message["umask"])
    caps = message.get("capabilities")
    user = message.get("user") or {}
    if caps is not None:
        top = last_cap()
        for name in (n for s in caps.values() for n in s):
            if CAP_NUMBERS[name] > top:
                raise RequestError(f"process.capabilities: the guest kernel has no {name}")
        bounding = cap_mask(caps.get("bounding", []))
        for number in range(top + 1):
            if not bounding & (1 << number):
                check(_libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), "dropping the bounding set")
        check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keeping capabilities")
    os.setgroups(user.get("additionalGids", []))
    os.setgid(user.get("gid", 0))
    os.setuid(user.get("uid", 0))
    if caps is not None:
        check(_libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "keeping capabilities")
        sets = {key: cap_mask(caps.get(key, [])) for key in ("effective", "permitted", "inheritable")}
        data = (_CapData * 2)()
        for i in (0, 1):
            data[i].effective, data[i].permitted, data[i].inheritable = (
                (sets[k] >> (32 * i)) & 0xFFFFFFFF for k in ("effective", "permitted", "inheritable"))
        check(_libc.capset(ctypes.byref(_CapHeader(CAP_VERSION_3, 0)), data), "capset")
        for name in caps.get("ambient", []):  # as runc: one not also inheritable and permitted is not raised
            _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NUMBERS[name], 0, 0)
    os.chdir(message.get("cwd") or "/")
    if nnp:
        check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "noNewPrivileges")
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
                raise RequestError(f"{where}: timed out after {hook.get('timeout')} s")
            time.sleep(0.01)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RequestError(f"{where}: exit status {code}" if code > 0 else f"{where}: killed by signal {-code}")

"""The jail a VMM starts in (stdlib only; run as ``python -S -I jail.py SPEC -- ARGV``, it
execs ARGV: same pid). A plugin builds that command with :func:`command` and the bind list
with :func:`vm_binds`; see docs/security.md and docs/plugins.md.

Before the VMM runs, in this order: a parent-death signal (SIGKILL: the VMM never
outlives its shim); its own cgroups (it writes its pid to each ``cgroup.procs`` given,
:mod:`runv.api.vmmcgroup`); its own mount namespace (host mounts arrive as a slave, none it
makes leave); a tmpfs at ``root`` holding only the :class:`Bind` list, each at the same
absolute path as on the host (the command line is unchanged), read-only unless marked
writable, ``nosuid``/``nodev`` unless a device, and a minimal ``/dev``; ``pivot_root`` into it
with the old root detached and the jail's own root made read-only; then ``no_new_privs``, a
capability bounding set of :data:`KEEP` only (the VMM runs as root, so these are also its
effective set), and a seccomp filter refusing setuid/setgid bits on
``chmod``/``open``/``mknod``/``mkdir`` (9p ``security_model=passthrough`` would otherwise let a
guest make setuid-root files in a host directory).
"""

import ctypes
import errno
import json
import os
import signal
import stat
import struct
import sys
from collections.abc import Sequence
from typing import NamedTuple

PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 22, 24, 38
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 19
MNT_DETACH = 2
SYS_PIVOT_ROOT, SYS_MOUNT_SETATTR = 155, 442  # x86_64; mount_setattr is 442 on every architecture
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
CAP_LAST = 63
# What the VMM keeps: 9p passthrough creates files as root and gives them the guest's owner
# (chown), and must reach every file of the share whatever its mode (the dac ones, fowner).
# Not kept, so refused to a guest through the share: mknod (device nodes), setfcap (file
# capabilities), sys_admin (trusted.* xattrs, mounts), fsetid, setuid/setgid, net_*, ...
KEEP = {"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3}
# What a VMM's helper may keep on top, by name (``command(caps=...)``): a file server that
# switches to each request's owner (setuid, setgid), chroots into its share (sys_chroot) and
# then narrows its own capabilities, bounding set included (setpcap)
EXTRA = {"setgid": 6, "setuid": 7, "setpcap": 8, "sys_chroot": 18}
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin")  # a merged-/usr host: the last four are symlinks

AUDIT_ARCH_X86_64 = 0xC000003E
SUID_BITS = 0o6000
# syscall number -> index of its mode argument (x86_64)
MODE_ARG = {90: 1, 91: 1, 268: 2, 452: 2,  # chmod, fchmod, fchmodat, fchmodat2
            2: 2, 85: 1, 257: 3,  # open, creat, openat
            133: 1, 259: 2, 83: 1, 258: 2}  # mknod, mknodat, mkdir, mkdirat
OPENAT2 = 437  # its mode is behind a pointer: refused with ENOSYS (callers fall back to openat)
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06


class Bind(NamedTuple):
    """One host path the VMM sees, at the same path: a ``dir``, ``file`` or ``dev`` (a device
    node: no ``nodev``), bound read-only unless ``writable``; a ``tree`` (a directory of mount
    points the host fills, the pod directory: read-only itself, so the guest can neither
    rename nor plant entries there, while the mounts below keep their own modes); or a
    ``link`` to ``target``."""

    path: str
    kind: str = "dir"
    writable: bool = False
    target: str = ""


# ---------------------------------------------------------------- the parent's side


def system_binds(binary: str) -> list[Bind]:
    """The VMM's binary and libraries: /usr read-only, /lib, /bin... as the host has them
    (symlinks on a merged-/usr host), and the binary itself when it lives elsewhere."""
    binds = []
    for path in SYSTEM:
        if os.path.islink(path):
            binds.append(Bind(path, "link", target=os.readlink(path)))
        elif os.path.isdir(path):
            binds.append(Bind(path))
    real = os.path.realpath(binary)
    if not any(real == p or real.startswith(p + "/") for p in SYSTEM):
        binds.append(Bind(real, "file"))
    return binds


def _qcow2_backing(path: str) -> str | None:
    """The backing file a qcow2 image names in its header (relative to its directory), or None."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
            if header[:4] != b"QFI\xfb":
                return None
            offset, size = int.from_bytes(header[8:16], "big"), int.from_bytes(header[16:20], "big")
            if not offset or not 0 < size < 4096:
                return None
            f.seek(offset)
            backing = os.fsdecode(f.read(size))
    except OSError:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(path), backing))


def disk_binds(path: str, writable: bool) -> list[Bind]:
    """A disk and, for a qcow2 overlay, its chain of backing files (read-only: QEMU opens them by the header's path)."""
    kind = "dev" if stat.S_ISBLK(os.stat(path).st_mode) else "file"
    binds = [Bind(path, kind, writable)]
    seen = {path}
    backing = _qcow2_backing(path) if kind == "file" else None
    while backing and backing not in seen and os.path.exists(backing):
        seen.add(backing)
        binds.append(Bind(backing, "file"))
        backing = _qcow2_backing(backing)
    return binds


def vm_binds(vm, binary: str, writable: tuple[str, ...] = (), readonly: tuple[str, ...] = ()) -> list[Bind]:
    """Everything a VMM needs to run ``vm`` (a :class:`runv.api.VMSpec`): its binary and
    libraries, the kernel and the initrd it boots (and the userland image) read-only, each share and disk with its own mode, the
    console log; plus ``writable`` and ``readonly`` paths a plugin adds (files or directories)."""
    def at(path) -> str:  # the VMM starts in the state directory: relative paths are relative to it
        return os.path.abspath(os.path.join(vm.state_dir, path))

    binds = system_binds(binary)
    guest = (vm.kernel, vm.userland.initrd, vm.userland.image) if vm.userland else (vm.kernel, vm.initrd)
    binds += [Bind(at(path), "file") for path in guest]
    binds += [Bind(at(share.path), "tree" if share.holds_mounts else "dir", not share.readonly) for share in vm.shares]
    for disk in vm.disks:
        binds += disk_binds(at(disk.path), not disk.readonly)
    binds.append(Bind(at(vm.console_log), "file", True))
    for paths, rw in ((writable, True), (readonly, False)):
        binds += [Bind(at(p), "dir" if os.path.isdir(at(p)) else "file", rw) for p in paths]
    return binds


def command(argv: list[str], *, root, cwd, binds: list[Bind], cgroups: Sequence[str] = (), kvm: bool = False,
            devpts: bool = False, fd_dir: bool = False, caps: Sequence[str] = ()) -> list[str]:
    """The command that runs ``argv`` jailed: ``root`` is an empty directory the jail's tmpfs
    is mounted on (in the VMM's own mount namespace only), ``cwd`` where the VMM starts,
    ``cgroups`` the ``cgroup.procs`` files it enters, ``kvm`` adds /dev/kvm, ``devpts`` a
    private /dev/pts and /dev/ptmx (ptys the VMM makes; the host reaches them through
    ``/proc/PID/root``), ``fd_dir`` its own ``/proc/self/fd`` and nothing else of /proc
    (QEMU's 9p server changes modes and times through it), ``caps`` the capabilities of
    :data:`EXTRA` it keeps besides :data:`KEEP`."""
    unknown = set(caps) - EXTRA.keys()
    if unknown:
        raise ValueError(f"capabilities a jail cannot keep: {sorted(unknown)}")
    spec = {"parent": os.getpid(), "root": os.path.abspath(root), "cwd": os.path.abspath(cwd), "binds": [list(b) for b in binds],
            "cgroups": list(cgroups), "devices": list(DEVICES) + (["/dev/kvm"] if kvm else []), "devpts": devpts, "fd_dir": fd_dir,
            "caps": sorted(EXTRA[name] for name in caps)}
    return [sys.executable, "-S", "-I", os.path.abspath(__file__), json.dumps(spec), "--", *argv]


# ---------------------------------------------------------------- the jail itself (runs as a script)


def seccomp_program() -> bytes:
    """A classic BPF program: for the calls in MODE_ARG, EPERM when the mode has S_ISUID or S_ISGID."""
    rules = sorted(MODE_ARG.items())
    body = 3 * len(rules) + 1  # each rule: jeq nr; ld arg; jset
    insns = [(LD_ABS, 0, 0, 4), None, (LD_ABS, 0, 0, 0)]  # arch; (jeq arch); nr
    tail = 3 + body  # index of "ret allow"; then "ret eperm", "ret enosys"
    insns[1] = (JEQ, 0, tail - 2, AUDIT_ARCH_X86_64)
    for nr, arg in rules:
        here = len(insns)
        insns.append((JEQ, 0, 2, nr))
        insns.append((LD_ABS, 0, 0, 16 + 8 * arg))  # the low 32 bits of args[arg]
        at = here + 2
        insns.append((JSET, tail + 1 - (at + 1), tail - (at + 1), SUID_BITS))
    here = len(insns)
    insns.append((JEQ, tail + 2 - (here + 1), 0, OPENAT2))
    insns += [(RET, 0, 0, RET_ALLOW), (RET, 0, 0, RET_ERRNO | errno.EPERM), (RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    return b"".join(struct.pack("HBBI", *insn) for insn in insns)


class Jail:
    """The steps, with libc."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self.libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    @staticmethod
    def fail(what: str, err: int | None = None) -> None:
        err = ctypes.get_errno() if err is None else err
        sys.stderr.write(f"runv jail: {what}: {os.strerror(err)}\n")
        sys.exit(126)

    def mount(self, source, target, fstype, flags: int, data=None, what: str = "") -> None:
        enc = (lambda v: None if v is None else os.fsencode(v))
        if self.libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
            self.fail(what or f"mounting {source} on {target}")

    def restrict(self, target: str, readonly: bool, device: bool) -> None:
        """Makes the bind at ``target`` (and every mount below it) read-only, nosuid, nodev."""
        attr = MOUNT_ATTR_NOSUID | (MOUNT_ATTR_RDONLY if readonly else 0) | (0 if device else MOUNT_ATTR_NODEV)
        buffer = struct.pack("QQQQ", attr, 0, 0, 0)
        if self.libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(target), AT_RECURSIVE, buffer, len(buffer)) == 0:
            return
        if ctypes.get_errno() != errno.ENOSYS:
            self.fail(f"restricting {target}")
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (MS_RDONLY if readonly else 0) | (0 if device else MS_NODEV)
        self.mount(None, target, None, flags, what=f"restricting {target}")  # before 5.12: the top mount only

    def place(self, root: str, bind: Bind, bound: list[str]) -> None:
        """Makes ``bind`` at the same path under ``root`` (its mount point made in the tmpfs,
        never inside an earlier bind: there it must already exist)."""
        path = os.path.normpath(bind.path)
        target = root + path
        inside = any(path.startswith(b + "/") for b in bound)
        if bind.kind == "link":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(bind.target, target)
            return
        if not os.path.lexists(target):
            if inside:
                self.fail(f"{path} lies in a bound directory but is not there", errno.ENOENT)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if bind.kind in ("dir", "tree"):
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        self.mount(path, target, None, MS_BIND | MS_REC)
        self.restrict(target, not bind.writable, bind.kind == "dev")
        if bind.kind == "tree":  # the top mount alone: what is mounted below (now and later) keeps its flags
            self.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, what=f"restricting {target}")
        bound.append(path)

    def build(self, spec: dict) -> None:
        """The jail's tmpfs, its binds and /dev, then pivot_root into it."""
        root = spec["root"]
        self.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m,nr_inodes=4096",
                   what=f"mounting the jail's tmpfs on {root}")
        bound: list[str] = []
        for bind in sorted((Bind(*b) for b in spec["binds"]), key=lambda b: os.path.normpath(b.path)):
            self.place(root, bind, bound)
        for device in spec["devices"]:
            if os.path.exists(device):
                self.place(root, Bind(device, "dev", True), bound)
        if spec["fd_dir"]:  # the VMM's own descriptors: the jail execs it, so this pid is the VMM's
            os.makedirs(root + "/proc/self/fd")
            self.mount(f"/proc/{os.getpid()}/fd", root + "/proc/self/fd", None, MS_BIND)
            self.restrict(root + "/proc/self/fd", True, False)
        if spec["devpts"]:
            os.makedirs(root + "/dev/pts", exist_ok=True)
            self.mount("devpts", root + "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
            os.symlink("pts/ptmx", root + "/dev/ptmx")
        os.chdir(root)
        os.mkdir("old-root")
        if self.libc.syscall(SYS_PIVOT_ROOT, b".", b"old-root") != 0:
            self.fail(f"pivot_root into {root}")
        os.chdir("/")
        if self.libc.umount2(b"/old-root", MNT_DETACH) != 0:
            self.fail("detaching the old root")
        os.rmdir("/old-root")
        self.mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   what="making the jail's root read-only")
        os.chdir(spec["cwd"])

    def confine(self, extra: list[int]) -> None:
        """no_new_privs, the capability bounding set (KEEP and ``extra``), the seccomp filter."""
        if self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            self.fail("PR_SET_NO_NEW_PRIVS")
        keep = {*KEEP.values(), *extra}
        for cap in range(CAP_LAST + 1):
            if cap not in keep and self.libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 \
                    and ctypes.get_errno() != errno.EINVAL:
                self.fail(f"dropping capability {cap}")
        program = seccomp_program()
        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = ctypes.create_string_buffer(struct.pack("HL", len(program) // 8, ctypes.addressof(buffer)))
        if self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
            self.fail("installing the seccomp filter")

    def run(self, spec: dict, argv: list[str]) -> None:
        if self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            self.fail("PR_SET_PDEATHSIG")
        if os.getppid() != spec["parent"]:  # the shim died before the signal was armed
            sys.exit(125)
        for procs in spec["cgroups"]:
            try:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
            except OSError as exc:
                self.fail(f"entering cgroup {os.path.dirname(procs)}", exc.errno)
        if self.libc.unshare(CLONE_NEWNS) != 0:
            self.fail("unshare(CLONE_NEWNS)")
        self.mount(None, "/", None, MS_REC | MS_SLAVE, what="making / a slave mount")
        self.build(spec)
        self.confine(spec["caps"])
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            self.fail(f"executing {argv[0]} in the jail", exc.errno)


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: jail.py SPEC -- ARGV...")
    Jail().run(json.loads(args[0]), args[2:])


if __name__ == "__main__":
    main(sys.argv[1:])

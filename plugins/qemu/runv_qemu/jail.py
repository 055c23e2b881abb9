"""The jail QEMU starts in (stdlib only; run as ``python -S -I jail.py PARENT_PID -- QEMU ARGV``).

Before it execs QEMU, in this order: a parent-death signal (SIGKILL: QEMU never outlives
its shim), its own mount namespace (mounts from the host still arrive, as a slave; none
it makes leave), ``no_new_privs``, a capability bounding set of :data:`KEEP` only (QEMU
runs as root, so after exec its capabilities are exactly these), and a seccomp filter
that refuses setuid/setgid bits on ``chmod``/``open``/``mknod``/``mkdir`` (the 9p share
is ``security_model=passthrough``: without it a guest could make setuid-root files in a
host directory). QEMU's own ``-sandbox`` filter is installed by QEMU on top.
See docs/security.md.
"""

import ctypes
import errno
import os
import signal
import struct
import sys

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS = 0x00020000
MS_REC, MS_SLAVE = 16384, 1 << 19
CAP_LAST = 63
# What QEMU keeps: 9p passthrough creates files as root and gives them the guest's owner
# (chown), and must reach every file of the share whatever its mode (the dac ones, fowner).
# Not kept, so refused to a guest through the share: mknod (device nodes), setfcap (file
# capabilities), sys_admin (trusted.* xattrs, mounts), fsetid, setuid/setgid, net_*, ...
KEEP = {"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3}

AUDIT_ARCH_X86_64 = 0xC000003E
SUID_BITS = 0o6000
# syscall number -> index of its mode argument (x86_64)
MODE_ARG = {90: 1, 91: 1, 268: 2, 452: 2,  # chmod, fchmod, fchmodat, fchmodat2
            2: 2, 85: 1, 257: 3,  # open, creat, openat
            133: 1, 259: 2, 83: 1, 258: 2}  # mknod, mknodat, mkdir, mkdirat
OPENAT2 = 437  # its mode is behind a pointer: refused with ENOSYS (callers fall back to openat)

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
LD_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06


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


def fail(what: str) -> None:
    err = ctypes.get_errno()
    sys.stderr.write(f"runv qemu jail: {what}: {os.strerror(err)}\n")
    sys.exit(126)


def main(argv: list) -> None:
    parent, separator, *command = argv
    if separator != "--" or not command:
        sys.exit("usage: jail.py PARENT_PID -- QEMU ARGS...")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        fail("PR_SET_PDEATHSIG")
    if os.getppid() != int(parent):  # the shim died before the signal was armed
        sys.exit(125)
    if libc.unshare(CLONE_NEWNS) != 0:
        fail("unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_SLAVE), None) != 0:
        fail("making / a slave mount")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail("PR_SET_NO_NEW_PRIVS")
    for cap in range(CAP_LAST + 1):
        if cap not in KEEP.values() and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            fail(f"dropping capability {cap}")
    program = seccomp_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buffer), 0, 0) != 0:
        fail("installing the seccomp filter")
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])

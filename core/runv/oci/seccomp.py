"""``linux.seccomp`` compiled to a BPF program on the host, with the host's libseccomp (by
ctypes), once per container: the guest agent only loads the program (one ``seccomp(2)``).

Why libseccomp: it is what runc links, so a profile means exactly what it means under runc
(architectures, the x32 ABI, argument comparisons split into one rule per comparison of the
same argument, its syscall table). Why on the host: the guest is the same architecture and
kernel ABI, and building a filter of Podman's default profile (437 names) in the guest cost
≈0.13 s of every start under TCG (docs/performance.md), against a few ms here.
"""

from __future__ import annotations

import ctypes
import os

from runv.api.errors import RunvError

LIBRARY = "libseccomp.so.2"  # Debian's libseccomp2 (scripts/install)
ACTIONS = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
           "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000,
           "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
             "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
ARCHES = {"SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32"}
FLTATR_CTL_NNP = 3
EPERM, EEXIST = 1, 17
_lib = None
_arches = None  # libseccomp's numbers of KNOWN_ARCHES, once looked up


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def library():
    """The host's libseccomp, its functions typed; RunvError naming the package without it."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as exc:
            raise RunvError(f"linux.seccomp needs libseccomp on the host ({exc}): apt-get install libseccomp2") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        for name in ("seccomp_rule_add_array", "seccomp_arch_add", "seccomp_export_bpf", "seccomp_attr_set"):
            getattr(lib, name).restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        if lib.seccomp_arch_native() != lib.seccomp_arch_resolve_name(b"x86_64"):
            raise RunvError("linux.seccomp is compiled on the host for the x86_64 guest: this host's libseccomp is "
                            "not x86_64's")
        _lib = lib
    return _lib


# a profile names other architectures' calls too (runc skips those): a name is known when
# libseccomp knows it on one of these
KNOWN_ARCHES = ("x86_64", "x86", "x32", "arm", "aarch64", "mips", "mips64", "mips64n32", "mipsel", "mipsel64",
                "mipsel64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x", "parisc", "parisc64", "riscv64")


def known_syscall(name: str) -> bool:
    """Whether libseccomp knows the system call ``name`` on any architecture."""
    global _arches
    lib = library()
    if _arches is None:
        _arches = [a for a in map(lib.seccomp_arch_resolve_name, (n.encode() for n in KNOWN_ARCHES)) if a]
    return any(lib.seccomp_syscall_resolve_name_arch(a, name.encode()) >= 0 for a in _arches)


def action(name: str, errno_ret) -> int:
    value = ACTIONS[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        return value | ((EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    return value


def compile_bpf(profile: dict) -> bytes:
    """The BPF program (``struct sock_filter`` array) of ``profile``, the OCI ``linux.seccomp``
    object already checked by runv.oci.security, built as runc builds it: no_new_privs left to
    the process spec, rules repeating the default action skipped, names this table lacks skipped."""
    lib = library()
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise RunvError("linux.seccomp: seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, FLTATR_CTL_NNP, 0), "not setting no_new_privs")
        for arch in profile.get("architectures") or []:
            result = lib.seccomp_arch_add(ctx, lib.seccomp_arch_resolve_name(ARCHES[arch].encode()))
            if result != -EEXIST:  # the native one
                _check(result, f"architecture {arch}")
        for rule in profile.get("syscalls") or []:
            act = action(rule["action"], rule.get("errnoRet"))
            if act == default:
                continue  # as runc: libseccomp refuses a rule that repeats the default action
            for name in rule["names"]:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number < 0:
                    continue  # as runc: a name this kernel's table lacks is skipped
                for args in _argument_groups(rule.get("args") or []):
                    array = (ArgCmp * len(args))(*[
                        ArgCmp(a["index"], OPERATORS[a["op"]], a.get("value", 0), a.get("valueTwo", 0)) for a in args])
                    result = lib.seccomp_rule_add_array(ctx, act, number, len(args), array)
                    if result != -EEXIST:  # the syscall already has a rule that covers this one
                        _check(result, f"rule for {name}")
        fd = os.memfd_create("runv-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "exporting the filter")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _argument_groups(args: list) -> list:
    """runc's rule: comparisons of distinct arguments go in one rule (AND); several on the
    same argument make one rule each (libseccomp refuses two on one argument)."""
    if len({a["index"] for a in args}) == len(args):
        return [args]
    return [[a] for a in args]


def _check(result: int, what: str) -> None:
    if result < 0:
        raise RunvError(f"linux.seccomp: {what}: {os.strerror(-result)}")

"""``linux.seccomp`` through Debian's libseccomp (``libseccomp.so.2`` in the guest image), by ctypes.

Why libseccomp rather than a BPF compiler of our own: it is what runc links, so a
profile means exactly what it means under runc (architectures, the x32 ABI, argument
comparisons split into one rule per comparison of the same argument, its syscall
table); the agent stays stdlib-only Python and the image grows by 129 KB. A profile of
437 names (Podman's default, amd64 rules) adds ≈0.26 s to a start under TCG; a Python
BPF compiler would spend its time in the same place, in interpreted Python under TCG
(docs/performance.md).
"""

import ctypes
import os

from runv.agent.errors import AgentError

LIBRARY = "/usr/lib/x86_64-linux-gnu/libseccomp.so.2"  # where runv guest build puts Debian's libseccomp2
ACTIONS = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
           "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000,
           "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
             "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
ARCHES = {"SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32"}
FLTATR_CTL_NNP = 3
EPERM = 1
_lib = None


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def library():
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as exc:
            raise AgentError(f"linux.seccomp: cannot load {LIBRARY} ({exc}): rebuild the guest image (runv guest build)") from None
        _lib.seccomp_init.restype = ctypes.c_void_p
        _lib.seccomp_init.argtypes = [ctypes.c_uint32]
        for name in ("seccomp_rule_add_array", "seccomp_arch_add", "seccomp_load", "seccomp_attr_set"):
            getattr(_lib, name).restype = ctypes.c_int
        _lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                ctypes.POINTER(ArgCmp)]
        _lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        _lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        _lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        _lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        _lib.seccomp_load.argtypes = [ctypes.c_void_p]
        _lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        _lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return _lib


def action(name: str, errno_ret) -> int:
    value = ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        return value | ((EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return value | ((EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    return value


def load(profile: dict) -> None:
    """Installs ``profile`` (the OCI ``linux.seccomp`` object) on the calling thread; the
    host has checked its names (runv.oci.security), the guest's libseccomp resolves them."""
    lib = library()
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise AgentError("linux.seccomp: seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, FLTATR_CTL_NNP, 0), "not setting no_new_privs")
        for arch in profile.get("architectures") or []:
            number = lib.seccomp_arch_resolve_name(ARCHES[arch].encode())
            result = lib.seccomp_arch_add(ctx, number)
            if result not in (0, -17):  # -EEXIST: the native one
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
                    if result != -17:  # -EEXIST: the syscall already has a rule that covers this one
                        _check(result, f"rule for {name}")
        _check(lib.seccomp_load(ctx), "loading the filter")
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
        raise AgentError(f"linux.seccomp: {what}: {os.strerror(-result)}")

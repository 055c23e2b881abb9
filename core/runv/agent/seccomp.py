"""Loading ``linux.seccomp``: the host compiled the profile to a BPF program with libseccomp
(runv.oci.seccomp); the agent installs it on the calling thread with one ``seccomp(2)``."""

import binascii
import ctypes
import os

from runv.agent.errors import RequestError

SYS_SECCOMP, SECCOMP_SET_MODE_FILTER = 317, 1  # x86_64; no flags, as runc's libseccomp load
INSTRUCTION = 8  # bytes of a struct sock_filter
_libc = ctypes.CDLL(None, use_errno=True)


class _Program(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load(seccomp: dict) -> None:
    """Installs ``seccomp["bpf"]`` (base64 of the program): the caller has no_new_privs or
    CAP_SYS_ADMIN, as the kernel requires."""
    try:
        program = binascii.a2b_base64(seccomp["bpf"])
    except (KeyError, TypeError, binascii.Error):
        raise RequestError("linux.seccomp: the host sent no BPF program") from None
    count = len(program) // INSTRUCTION
    if not count or len(program) % INSTRUCTION or count > 0xFFFF:
        raise RequestError(f"linux.seccomp: a BPF program of {len(program)} bytes is not whole instructions")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _Program(count, ctypes.cast(buffer, ctypes.c_void_p))
    if _libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(fprog)) != 0:
        raise RequestError(f"linux.seccomp: loading the filter: {os.strerror(ctypes.get_errno())}")

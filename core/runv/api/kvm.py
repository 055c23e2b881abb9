"""Is KVM usable here? A real test, not "does /dev/kvm exist".

The probe creates a VM through the KVM API itself (``ioctl`` on ``/dev/kvm``), gives it
one vCPU and 64 KiB of memory holding a four-instruction real-mode loop, runs 2×
``LOOPS`` instructions and times it. Hardware virtualization (VT-x/AMD-V) runs them at
native speed, well under a millisecond. A software KVM such as PVM (the ``kvm_pvm``
module, KVM for nested use without VMX) creates VMs and vCPUs just as well, but executes
this code through its instruction emulator, a few million instructions per second, and
boots only PVM-enabled guest kernels: a stock kernel never reaches init. Speed is the
functional test; the vendor module named in ``/sys/module`` explains the result.

The measurement runs in a child process (``python -m runv.api.kvm``) under a hard
timeout, so a wedged ``KVM_RUN`` can never hang the caller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEVICE = "/dev/kvm"
LOOPS = 100_000
FAST_ENOUGH = 0.02  # seconds for 2×LOOPS instructions; hardware KVM needs ~0.1 ms
TIMEOUT = 5.0
CACHE = Path(os.environ.get("RUNV_KVM_CACHE", "/run/runv/kvm-verdict.json"))
VENDOR_MODULES = {"kvm_intel": "Intel VT-x", "kvm_amd": "AMD-V", "kvm_pvm": "PVM (software KVM)"}

# ioctl numbers from <linux/kvm.h>
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_EXIT_HLT = 5
KVM_EXIT_NAMES = {0: "unknown", 2: "io", 5: "hlt", 6: "mmio", 8: "shutdown", 9: "fail_entry", 17: "internal_error"}


def vendor() -> str | None:
    """The KVM vendor module loaded (kvm_intel, kvm_amd, kvm_pvm), or None."""
    for module in VENDOR_MODULES:
        if os.path.isdir(f"/sys/module/{module}"):
            return module
    return None


def measure(loops: int = LOOPS) -> dict:
    """Runs the test guest in this process; returns what happened (raises OSError)."""
    import ctypes
    import fcntl
    import mmap
    import struct

    started = time.monotonic()
    kvm = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    api = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    memory = mmap.mmap(-1, 0x10000)
    # at 0x1000, real mode: mov ecx, loops / dec ecx / jnz -3 / hlt
    code = b"\x66\xb9" + struct.pack("<I", loops) + b"\x66\x49\x75\xfc\xf4"
    memory[0x1000 : 0x1000 + len(code)] = code
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("<IIQQQ", 0, 0, 0, len(memory), address))
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run = mmap.mmap(vcpu, fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    struct.pack_into("<QIH", sregs, 0, 0, 0xFFFF, 0)  # cs: base 0, limit 64 KiB, selector 0
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)
    fcntl.ioctl(vcpu, KVM_GET_REGS, regs)
    struct.pack_into("<QQ", regs, 128, 0x1000, 0x2)  # rip, rflags
    fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
    setup = time.monotonic() - started
    began = time.monotonic()
    fcntl.ioctl(vcpu, KVM_RUN, 0)
    elapsed = time.monotonic() - began
    reason = struct.unpack_from("<I", run, 8)[0]
    fcntl.ioctl(vcpu, KVM_GET_REGS, regs)
    rcx = struct.unpack_from("<Q", regs, 16)[0]
    for fd in (vcpu, vm, kvm):
        os.close(fd)
    return {"api": api, "setup_s": setup, "run_s": elapsed, "exit": KVM_EXIT_NAMES.get(reason, str(reason)),
            "completed": reason == KVM_EXIT_HLT and rcx == 0, "instructions": 2 * loops}


def verdict(timeout: float = TIMEOUT) -> dict:
    """``{"usable": bool, "reason": str|None, ...measurements}``, decided within ``timeout``."""
    module = vendor()
    base = {"usable": False, "vendor": module, "device": DEVICE}
    if not os.path.exists(DEVICE):
        return base | {"reason": f"no {DEVICE}: enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd, or use --hypervisor tcg"}
    if not os.access(DEVICE, os.R_OK | os.W_OK):
        return base | {"reason": f"no permission to open {DEVICE}: add this user to the kvm group, or use --hypervisor tcg"}
    try:
        out = subprocess.run([sys.executable, "-S", "-m", "runv.api.kvm"], capture_output=True, text=True,
                             timeout=timeout, env={**os.environ, "PYTHONPATH": _package_parent()})
    except subprocess.TimeoutExpired:
        return base | {"reason": f"a 4-instruction test guest did not halt within {timeout:.0f} s under {DEVICE}: KVM is not usable, use --hypervisor tcg"}
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    base |= result
    if "error" in result:
        return base | {"reason": f"{DEVICE} cannot run a test guest ({result['error']}): use --hypervisor tcg"}
    if not result["completed"]:
        return base | {"reason": f"a test guest under {DEVICE} stopped with exit {result['exit']!r} instead of halting: use --hypervisor tcg"}
    rate = result["instructions"] / max(result["run_s"], 1e-9) / 1e6
    base["mips"] = round(rate, 1)
    slow = result["run_s"] > FAST_ENOUGH
    if module == "kvm_pvm" or slow:
        what = "PVM, the kvm_pvm module" if module == "kvm_pvm" else f"vendor module {module or 'unknown'}"
        return base | {"reason": (
            f"KVM is software-only here ({what}): a test guest ran {result['instructions']} instructions in "
            f"{result['run_s'] * 1000:.0f} ms ({rate:.1f} M/s, emulated; hardware KVM runs them in under 1 ms) and "
            f"a stock guest kernel never boots under it: use --hypervisor tcg, or a host with VT-x/AMD-V")}
    return base | {"usable": True, "reason": None}


def cache_key() -> dict:
    """What a cached verdict holds for: this host boot, its KVM module and device node."""
    return {"boot_id": _read("/proc/sys/kernel/random/boot_id"), "vendor": vendor(), "device": _device_id()}


def cached_verdict() -> dict:
    """``verdict()``, measured once per host boot and KVM module (it costs ~0.13 s, and
    ``--hypervisor auto`` asks on every create); kept in ``CACHE`` (``RUNV_KVM_CACHE``)
    as ``{"key": cache_key(), "verdict": ...}``."""
    key = cache_key()
    try:
        cached = json.loads(CACHE.read_text())
        if cached["key"] == key:
            return cached["verdict"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = verdict()
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE.with_name(f"{CACHE.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "verdict": result}))
        os.replace(tmp, CACHE)
    except OSError:
        pass  # not root: measure every time
    return result


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _device_id() -> list | None:
    try:
        st = os.stat(DEVICE)
    except OSError:
        return None
    return [st.st_rdev, st.st_ino, st.st_ctime_ns]


def _package_parent() -> str:
    """The directory holding the ``runv`` package, for the child's PYTHONPATH."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def main() -> None:
    try:
        result = measure()
    except OSError as exc:
        result = {"error": f"{exc.strerror or exc} ({type(exc).__name__})"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

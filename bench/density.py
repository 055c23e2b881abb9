"""Density: the host memory (PSS) an idle container costs, with where it goes.

Makes a template of each kind of clone (private, the default; shared) in a temporary
template directory, starts N idle busybox containers (`sleep 600`) from it at once, lets
them settle, and prints the PSS per container (its shim, its VMM, its file server),
the VMM's split into guest RAM, TCG's translation cache, its own heap and its files, and
the guest's /proc/meminfo of one of them. The baseline, measured in the same run, is a
bare QEMU booted with the same kernel, initrd, memory size and accelerator, idling in
busybox's `sleep` as its init: the memory any VM of this guest costs before runv adds to it.

    .venv/bin/python bench/density.py [--count 8] [--kinds private shared]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from boot import bare_boot
from common import RUNV, busybox_bundle, container_memory, median, pss_mib

SETTLE = 20.0  # seconds the containers idle before they are measured
MEMINFO = ("MemTotal", "MemFree", "Cached", "Shmem", "AnonPages", "Slab", "PageTables", "KernelStack")


def bare_vm_pss(count: int) -> list[float]:
    """The PSS of ``count`` bare QEMUs idling together in the guest's busybox ``sleep``."""
    argv = bare_boot("/bin/busybox -- sleep 600")
    vms = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) for _ in range(count)]
    try:
        time.sleep(SETTLE)
        return [pss_mib(vm.pid) for vm in vms]
    finally:
        for vm in vms:
            vm.kill()
            vm.wait()


def runv(root: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([RUNV, "--root", str(root), *args], stdin=subprocess.DEVNULL, **kwargs)


def measure(root: Path, bundle: Path, count: int, template: str, log: Path) -> tuple[dict[str, list[float]], str]:
    """Per-container PSS parts (lists over the containers) and one guest's /proc/meminfo."""
    ids = [f"idle-{template}-{k}" for k in range(count)]
    try:
        with open(log, "w") as out:  # a shim holds its caller's stdio: files, not pipes
            starts = [subprocess.Popen([RUNV, "--root", str(root), "--template", template, "run", "-d", "--bundle",
                                        str(bundle), cid], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
                      for cid in ids]
            if any(start.wait() for start in starts):
                raise SystemExit(f"a container failed to start: {log.read_text().strip()}")
        time.sleep(SETTLE)
        parts: dict[str, list[float]] = defaultdict(list)
        for cid in ids:
            state = json.loads(runv(root, "state", cid, capture_output=True, text=True, check=True).stdout)
            assert state["status"] == "running", f"{cid} is {state['status']}"
            started = json.loads((root / cid / "template.json").read_text())
            assert started.get("template") == template, f"{cid} did not start from template {template}: {started}"
            for kind, mib in container_memory(state["pid"]).items():
                parts[kind].append(mib)
        meminfo = runv(root, "exec", ids[0], "cat", "/proc/meminfo", capture_output=True, text=True, check=True).stdout
        return parts, meminfo
    finally:
        for cid in ids:
            runv(root, "delete", "--force", cid, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="idle containers started at once")
    parser.add_argument("--kinds", nargs="+", default=["private", "shared"], help="template clone kinds to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["RUNV_TEMPLATE_DIR"] = str(tmp / "templates")
        for kind in args.kinds:
            subprocess.run([RUNV, "template", "create", "--clones", kind, kind], check=True, stdout=subprocess.DEVNULL)
        bundle = busybox_bundle(tmp / "idle", ["sleep", "600"])
        bare = median(bare_vm_pss(args.count))
        print(f"## {args.count} bare QEMUs of the same guest, idle: PSS per VM (median) {bare:7.1f} MiB")
        for kind in args.kinds:
            parts, meminfo = measure(tmp / f"root-{kind}", bundle, args.count, kind, tmp / f"{kind}.log")
            totals = [sum(values) for values in zip(*parts.values())]
            print(f"## {args.count} idle containers, {kind} clones: PSS per container (median), MiB")
            for name, values in parts.items():
                print(f"  {name:<28} {median(values):7.1f}")
            total = median(totals)
            print(f"  {'total':<28} {total:7.1f}   (min {min(totals):.1f}, max {max(totals):.1f}; "
                  f"{total / bare:.2f}x a bare QEMU)")
            fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
            print("  guest /proc/meminfo: " + ", ".join(
                f"{name} {int(fields[name].split()[0]) / 1024:.0f}" for name in MEMINFO if name in fields) + " MiB")


if __name__ == "__main__":
    main()

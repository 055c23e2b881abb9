"""Shared bits of the benchmarks: timing, medians, busybox bundles, the runv binary."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from runv.testing.host import guest_memory

RUNV = str(Path(sys.executable).with_name("runv"))
BUSYBOX = "/bin/busybox"


def timed(argv: list[str], **kwargs) -> float:
    """Seconds ``argv`` took to run to completion (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def busybox_bundle(path: Path, args: list[str]) -> Path:
    """A bundle whose rootfs is busybox alone (statically linked)."""
    rootfs = path / "rootfs"
    for sub in ("bin", "proc", "sys", "dev", "tmp"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in ("sh", "true", "cat", "echo", "sleep"):
        (rootfs / "bin" / applet).unlink(missing_ok=True)
        (rootfs / "bin" / applet).symlink_to("busybox")
    config = {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "hostname": "bench",
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def report(title: str, rows: list[tuple[str, float]], ratio: tuple[str, float, float]) -> None:
    print(f"## {title}")
    for name, value in rows:
        print(f"{name:<48} {value:8.3f} s")
    label, numerator, denominator = ratio
    print(f"{label:<48} {numerator / denominator:8.2f} x")


def split(pid: int) -> dict[str, float]:
    """A process's PSS in MiB by what its mappings hold, but for shared memory of the guest's
    (memfds): mapped or not, those pages are counted whole by runv.testing.host.guest_memory."""
    parts: dict[str, float] = defaultdict(float)
    kind = "files"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header
                path, perms = " ".join(fields[5:]), fields[1]
                if "memfd:" in path:
                    kind = None
                elif path.endswith("/memory"):  # a shared clone's private mapping of its template's RAM
                    kind = "guest RAM"
                elif not path.startswith("/") and "x" in perms:
                    kind = "TCG code cache"
                elif not path.startswith("/"):
                    kind = "heap"
                else:
                    kind = "files"
            elif fields[0] == "Pss:" and kind:
                parts[kind] += int(fields[1]) / 1024
    return parts


def pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024


def container_memory(shim: int) -> dict[str, float]:
    """The host memory of a running container in MiB, by part: its shim's PSS, and its VMM's
    and file server's by what their mappings hold, the guest's memfds counted whole."""
    children = [int(p) for p in Path(f"/proc/{shim}/task/{shim}/children").read_text().split()]
    processes: dict[str, float] = defaultdict(float)
    for child in children:
        name = "QEMU" if Path(f"/proc/{child}/comm").read_text().startswith("qemu") else "file server"
        for kind, mib in split(child).items():
            processes[f"{name} {kind}" if kind != "guest RAM" else kind] += mib
    processes["guest RAM"] += guest_memory(children) / (1 << 20)
    parts = {"shim": pss_mib(shim)}
    for kind in ("guest RAM", "QEMU heap", "QEMU TCG code cache", "QEMU files", "file server heap", "file server files"):
        parts[kind] = processes[kind]
    return parts

"""Shared bits of the benchmarks: timing, medians, busybox bundles, the runv binary."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

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

"""VM templates: `runv run` of `true` from a template against a cold boot, and the memory
(PSS, summed over the QEMU processes) of N idle containers from a template against N cold.

It makes its own template in a temporary directory (RUNV_TEMPLATE_DIR), so installed
templates are neither used nor touched.

    .venv/bin/python bench/templates.py [-n 5] [--idle 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import RUNV, busybox_bundle, median, timed

from runv.testing import vm_processes_in


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def idle_pss(root: Path, bundle: Path, count: int, template: str) -> tuple[float, float]:
    """Starts ``count`` idle containers one after another; returns (total PSS in MiB,
    seconds to start them all), then deletes them."""
    ids = [f"idle-{template}-{i}" for i in range(count)]
    started = time.perf_counter()
    try:
        for cid in ids:
            subprocess.run([RUNV, "--root", str(root), "--template", template, "run", "-d", "--bundle", str(bundle), cid],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        took = time.perf_counter() - started
        time.sleep(3)  # let the last guests settle
        pids = vm_processes_in(root)
        assert len(pids) == count, f"{len(pids)} VMs running, expected {count}"
        return sum(pss_kib(pid) for pid in pids) / 1024, took
    finally:
        for cid in ids:
            subprocess.run([RUNV, "--root", str(root), "delete", "--force", cid], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs of each start (median is reported)")
    parser.add_argument("--idle", type=int, default=10, help="idle VMs for the memory comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RUNV_TEMPLATE_DIR"] = f"{tmp}/templates"
        made = timed([RUNV, "template", "create", "bench"])
        root = Path(tmp) / "state"
        bundle = busybox_bundle(Path(tmp) / "true", ["true"])
        cold, warm = [], []
        for i in range(args.n):  # interleaved, so drift in machine load hits both alike
            cold.append(timed([RUNV, "--root", str(root), "--template", "off", "run", "--bundle", str(bundle), f"cold-{i}"]))
            warm.append(timed([RUNV, "--root", str(root), "--template", "bench", "run", "--bundle", str(bundle), f"warm-{i}"]))
        sleeper = busybox_bundle(Path(tmp) / "sleep", ["sleep", "1000"])
        warm_pss, warm_start = idle_pss(root, sleeper, args.idle, "bench")
        cold_pss, cold_start = idle_pss(root, sleeper, args.idle, "off")
    print(f"## templates: median of {args.n} starts, {args.idle} idle VMs of 256 MiB")
    print(f"{'runv template create':<48} {made:8.3f} s")
    print(f"{'runv run true, cold boot':<48} {median(cold):8.3f} s")
    print(f"{'runv run true, from a template':<48} {median(warm):8.3f} s")
    print(f"{'template / cold':<48} {median(warm) / median(cold):8.2f} x")
    print(f"{f'PSS of {args.idle} idle VMs, cold':<48} {cold_pss:8.0f} MiB  (started in {cold_start:.0f} s)")
    print(f"{f'PSS of {args.idle} idle VMs, from a template':<48} {warm_pss:8.0f} MiB  (started in {warm_start:.0f} s)")
    print(f"{'template / cold (PSS)':<48} {warm_pss / cold_pss:8.2f} x")


if __name__ == "__main__":
    main()

"""VM templates: `runv run` of `true` from a template against a cold boot, and the memory
(PSS, summed over the QEMU processes) of N idle containers from a template against N cold,
for both kinds of clones: private (the default: each loads its own RAM) and shared (they
map the template's RAM copy-on-write).

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

KINDS = ("private", "shared")


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
        made = {clones: timed([RUNV, "template", "create", "--clones", clones, clones]) for clones in KINDS}
        root = Path(tmp) / "state"
        bundle = busybox_bundle(Path(tmp) / "true", ["true"])
        starts = {kind: [] for kind in ("off", *KINDS)}
        for i in range(args.n):  # interleaved, so drift in machine load hits all alike
            for kind, runs in starts.items():
                runs.append(timed([RUNV, "--root", str(root), "--template", kind, "run", "--bundle", str(bundle), f"{kind}-{i}"]))
        sleeper = busybox_bundle(Path(tmp) / "sleep", ["sleep", "1000"])
        pss = {kind: idle_pss(root, sleeper, args.idle, kind) for kind in starts}
    cold = median(starts["off"])
    print(f"## templates: median of {args.n} starts, {args.idle} idle VMs of 256 MiB")
    print(f"{'runv run true, cold boot':<48} {cold:8.3f} s")
    for kind in KINDS:
        print(f"{f'runv template create --clones {kind}':<48} {made[kind]:8.3f} s")
        print(f"{f'runv run true, from a {kind} template':<48} {median(starts[kind]):8.3f} s  "
              f"({median(starts[kind]) / cold:.2f}x cold)")
    print(f"{f'PSS of {args.idle} idle VMs, cold':<48} {pss['off'][0]:8.0f} MiB  (started in {pss['off'][1]:.0f} s)")
    for kind in KINDS:
        print(f"{f'PSS of {args.idle} idle VMs, {kind} template':<48} {pss[kind][0]:8.0f} MiB  "
              f"({pss[kind][0] / pss['off'][0]:.2f}x cold; started in {pss[kind][1]:.0f} s)")


if __name__ == "__main__":
    main()

"""`runv run` of `true` against a bare QEMU boot of the same kernel and initrd.

The bare boot runs the guest's first userspace program (/sbin/runv-halt, which powers
off at once) with the machine options runv uses, so the ratio is runv's own overhead:
the agent's start, the rootfs share, the shim and the CLI.

    .venv/bin/python bench/boot.py [-n 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import RUNV, busybox_bundle, median, report, timed

KERNEL = "/var/lib/runv/kernel"
INITRD = "/var/lib/runv/initrd.img"


def bare_boot() -> list[str]:
    return [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", KERNEL, "-initrd", INITRD, "-serial", "null",
        "-append", "console=ttyS0 panic=-1 quiet rdinit=/sbin/runv-halt",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs of each (median is reported)")
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        bundle = busybox_bundle(Path(tmp) / "bundle", ["true"])
        root = Path(tmp) / "state"
        runv_runs, bare_runs = [], []
        for i in range(n):  # interleaved, so drift in machine load hits both alike
            bare_runs.append(timed(bare_boot()))
            runv_runs.append(timed([RUNV, "--root", str(root), "run", "--bundle", str(bundle), f"bench-{i}"]))
    report(
        f"boot: median of {n}",
        [("bare QEMU boot to first userspace instruction", median(bare_runs)), ("runv run true", median(runv_runs))],
        ("runv run / bare boot", median(runv_runs), median(bare_runs)),
    )


if __name__ == "__main__":
    main()

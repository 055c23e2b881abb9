"""`runv run` of `true` against a bare QEMU boot of the same kernel and initrd.

The bare boot runs the guest's first userspace program (/sbin/runv-halt, which powers
off at once) with the machine options runv uses, so the cold ratio is runv's own
overhead: the agent's start, the rootfs share, the shim and the CLI. The template line
shows what `--template auto` does to it (it needs the default template, which `runv guest
build` makes).

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
        runv = [RUNV, "--root", str(Path(tmp) / "state")]
        bare, cold, warm = [], [], []
        for i in range(n):  # interleaved, so drift in machine load hits all alike
            bare.append(timed(bare_boot()))
            cold.append(timed(runv + ["--template", "off", "run", "--bundle", str(bundle), f"cold-{i}"]))
            warm.append(timed(runv + ["run", "--bundle", str(bundle), f"warm-{i}"]))
    report(
        f"boot: median of {n}",
        [
            ("bare QEMU boot to first userspace instruction", median(bare)),
            ("runv run true, cold boot (--template off)", median(cold)),
            ("runv run true, from a template (auto)", median(warm)),
        ],
        ("runv run (cold) / bare boot", median(cold), median(bare)),
    )
    print(f"{'runv run (template) / bare boot':<48} {median(warm) / median(bare):8.2f} x")


if __name__ == "__main__":
    main()

"""``podman run --rm IMAGE true`` with runv against the same with runc, in one run.

    .venv/bin/python bench/podman.py [--runs 5] [--template]

Uses the private Podman configuration of tests/vm/test_podman.py (storage and runv's state
under a temporary directory, CNI bridge network, an image imported from a busybox
rootfs). Runs are interleaved (runc and runv, with the default network and with
``--network none``) after one unmeasured warm-up of each, and timed on the host from
podman's start to its exit: image lookup, conmon, network set-up and teardown, the
runtime's create/start/delete, the container itself. runv boots cold (``--template
off``). ``--template`` also makes the default template (``runv template create`` into a
temporary RUNV_TEMPLATE_DIR) and times runs that start from it, with and without a
network: one template serves both (the container's files reach the VM through its one
pod share, whatever podman binds; its NIC is hot-plugged after the restore).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests/vm"))
from realclients import mounts_under, rootfs_tar
from test_podman import IMAGE, Podman, host_network_kept

from runv.testing.host import RUNV, make_rootfs


def timed(podman: Podman, flags: tuple[str, ...], run_flags: tuple[str, ...]) -> float:
    start = time.perf_counter()
    result = podman(*flags, "run", "--rm", *run_flags, IMAGE, "true", timeout=300)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"podman {' '.join(flags)} run failed: {result.stderr}")
    return took


def measure(podman: Podman, base: Path, templates: Path, args) -> tuple[dict[str, list[float]], float]:
    """The samples of every variant (the machine's load average after them); podman's
    containers, storage and mounts are gone afterwards."""
    try:
        podman("import", rootfs_tar(make_rootfs(base / "rootfs"), base / "rootfs.tar"), IMAGE, check=True)
        none = ("--network", "none")
        variants = {
            "runc, default network (CNI bridge)": (("--runtime", "runc"), ()),
            "runv, default network (CNI bridge)": (("--runtime-flag", "template=off"), ()),
            "runc, --network none": (("--runtime", "runc"), none),
            "runv, --network none": (("--runtime-flag", "template=off"), none),
        }
        if args.template:
            env = {**os.environ, "RUNV_TEMPLATE_DIR": str(templates)}
            subprocess.run([RUNV, "template", "create"], env=env, check=True, stdout=subprocess.DEVNULL)
            variants["runv from a template, default network (CNI bridge)"] = ((), ())
            variants["runv from a template, --network none"] = ((), none)
        for flags, run_flags in variants.values():
            timed(podman, flags, run_flags)  # warm-up: page cache, CNI, QEMU's first start
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, (flags, run_flags) in variants.items():
                samples[name].append(timed(podman, flags, run_flags))
        return samples, os.getloadavg()[0]
    finally:
        podman("rm", "--all", "--force", "--time", "0", timeout=120)
        podman("system", "reset", "--force", timeout=120)
        for point in mounts_under(base):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--template", action="store_true", help="also time runs from a template of the containers' shape")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rvbp-"))  # short: a template restore fails once <root>/<id>/agent.sock passes 108 bytes
    templates = base / "templates"
    podman = Podman.configure(base, runv_env=f"RUNV_TEMPLATE_DIR={templates} ")
    with host_network_kept():
        samples, load = measure(podman, base, templates, args)
    print(f"`podman run --rm IMAGE true`, {args.runs} runs each, interleaved; seconds; load average {load:.1f}\n")
    print("| runtime, network | median | min | max | vs runc |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        runc = statistics.median(samples["runc, " + name.split(", ", 1)[1]])
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {min(values):.2f} | {max(values):.2f} | {med / runc:.1f}× |")


if __name__ == "__main__":
    main()

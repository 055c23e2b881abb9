"""File-heavy work in the guest on each storage backend, in one run.

    .venv/bin/python bench/storage.py [--files 3000] [--runs 1]

For each mode of the overlay plugin (share: the rootfs over 9p; overlay: read-only 9p
lower + ext4 upper on virtio-blk; block: ext4 base image + qcow2 on virtio-blk) it runs one
container (TCG) that, timed with /proc/uptime inside the guest:

* untar: extracts a tarball of N small files into the container's rootfs (writes);
* find-new: ``find`` over the tree it just wrote;
* find-base / read-base: ``find`` over, then ``cat`` of, the same tree shipped in the
  bundle's rootfs (reads from the shared base / lower layer).

devicemapper is left out where the host kernel has no device-mapper (see
plugins/devicemapper/tests/test_devicemapper.py for where its code runs); its guest side is
the block mode's (ext4 on virtio-blk). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from runv.testing.host import RUNV, make_rootfs

SCRIPT = r"""
t() { read up idle < /proc/uptime; echo $up; }
phase() { s=$(t); "$@" >/dev/null; e=$(t); echo "$name $s $e"; }
name=untar phase tar -xf /bench.tar -C /new
sync
name=find-new phase find /new
name=find-base phase find /tree
name=read-base phase sh -c 'find /tree -type f | xargs cat'
"""
MODES = ("share", "overlay", "block")


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        directory = root / f"d{i // 50:03d}" / f"s{i % 5}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:05d}.txt").write_bytes(os.urandom(512).hex().encode())  # 1 KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runv-bench-storage-"))
    try:
        base = make_rootfs(work / "base")
        (base / "new").mkdir()
        make_tree(base / "tree", args.files)
        with tarfile.open(base / "bench.tar", "w") as tar:
            tar.add(base / "tree", arcname="tree")
        config_file = work / "config.toml"
        config_file.write_text(f'[storage]\ncache_dir = "{work / "cache"}"\ncontainers_dir = "{work / "containers"}"\n')
        env = {**os.environ, "RUNV_CONFIG": str(config_file)}
        results: dict[str, dict[str, list[float]]] = {}
        for run in range(args.runs):
            for mode in MODES:
                bundle = work / f"bundle-{mode}"
                shutil.rmtree(bundle, ignore_errors=True)
                shutil.copytree(base, bundle / "rootfs", symlinks=True)
                spec = {
                    "ociVersion": "1.0.2",
                    "process": {"args": ["sh", "-c", SCRIPT], "env": ["PATH=/bin"], "cwd": "/"},
                    "root": {"path": "rootfs"},
                    "annotations": {"io.runv.storage.mode": mode},
                }
                (bundle / "config.json").write_text(json.dumps(spec))
                started = time.monotonic()
                done = subprocess.run([RUNV, "--root", str(work / "state"), "run", "--bundle", str(bundle),
                                       f"bench-{mode}-{run}"], capture_output=True, text=True, env=env, timeout=900)
                total = time.monotonic() - started
                if done.returncode != 0:
                    sys.exit(f"{mode}: exit {done.returncode}: {done.stderr.strip()}")
                phases = results.setdefault(mode, {})
                for line in done.stdout.splitlines():
                    name, start, end = line.split()
                    phases.setdefault(name, []).append(float(end) - float(start))
                phases.setdefault("run (create to exit)", []).append(total)
        names = ["untar", "find-new", "find-base", "read-base", "run (create to exit)"]
        print(f"{args.files} files of 1 KiB, best of {args.runs} run(s), seconds (TCG, {os.cpu_count()} host cores)\n")
        print("| mode | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for mode in MODES:
            print(f"| {mode} | " + " | ".join(f"{min(results[mode][n]):.2f}" for n in names) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

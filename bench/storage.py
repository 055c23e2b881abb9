"""A file-heavy job on each of runv's data paths, against runc on the same rootfs, in one run.

    .venv/bin/python bench/storage.py [--files 1790] [--runs 3]

The job, in a busybox container: untar N Python source files (this interpreter's stdlib
and site-packages, sorted, the first N) into a directory, ``find`` it, read every file,
``grep -r`` it, remove it; timed inside the container from /proc/uptime. Where the
directory is:

* runc: the container's rootfs, on the host (the baseline);
* runv share: the rootfs in the default storage mode, shared with the VM (virtio-fs where
  there is a virtiofsd, else 9p);
* runv volume: a bind-mounted host directory (a volume);
* runv overlay: the overlay mode (shared read-only lower, ext4 upper on virtio-blk);
* runv block: the block mode (the VM's own ext4 disk);
* runv tmpfs: a tmpfs in the guest.

Runs are interleaved; each row is the median. It prints the table docs/performance.md
keeps: the job's seconds, the whole ``run``, and the job against the block mode's (the
VM's own disk: what no shared filesystem can beat) and against runc's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

from runv.testing.host import RUNV, make_rootfs

JOB = r"""
set -e
t() { read up idle < /proc/uptime; echo $up; }
a=$(t); mkdir -p $DIR/job; tar -xf /job.tar -C $DIR/job
b=$(t); find $DIR/job > /dev/null
c=$(t); find $DIR/job -type f | xargs cat > /dev/null
d=$(t); grep -r -c import $DIR/job > /dev/null
e=$(t); rm -rf $DIR/job
echo "job $a $b $c $d $e $(t)"
"""
PHASES = ("untar", "find", "read", "grep", "rm")
ROWS = ("runc", "share", "volume", "overlay", "block", "tmpfs")


def sources(count: int) -> list[Path]:
    """The first ``count`` Python source files of this interpreter's stdlib and site-packages, sorted."""
    found: set[Path] = set()
    for key in ("stdlib", "purelib", "platlib"):
        found.update(Path(sysconfig.get_paths()[key]).rglob("*.py"))
    return sorted(found)[:count]


def bundle(base: Path, path: Path, row: str, volume: Path) -> Path:
    """The job's bundle for ``row``: runc's own spec for runc, runv's plain one otherwise."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(base, path / "rootfs", symlinks=True)
    where = {"volume": "/vol", "tmpfs": "/scratch"}.get(row, "/work")
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "hostname": "bench", "annotations": {}, "mounts": []}
    if row == "runc":
        subprocess.run(["runc", "spec"], cwd=path, check=True)
        config = json.loads((path / "config.json").read_text())
        config["root"]["readonly"] = False
    config["process"] = {**config.get("process", {}), "args": ["sh", "-c", JOB.replace("$DIR", where)],
                         "env": ["PATH=/bin"], "cwd": "/", "terminal": False}
    if row in ("overlay", "block"):
        config["annotations"]["io.runv.storage.mode"] = row
    if row == "volume":
        shutil.rmtree(volume, ignore_errors=True)
        volume.mkdir()
        config["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]})
    if row == "tmpfs":
        config["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=512m"]})
    (path / "config.json").write_text(json.dumps(config))
    return path


def run_once(row: str, path: Path, work: Path, env: dict, run: int) -> tuple[float, float, list[float]]:
    """(the job's seconds, the whole run's, each phase's) for one run of ``row``."""
    if row == "runc":
        argv = ["runc", "--root", str(work / "runc-state"), "run", "--bundle", str(path), f"bench-{run}"]
    else:
        argv = [RUNV, "--root", str(work / "state"), "run", "--bundle", str(path), f"bench-{row}-{run}"]
    started = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=1800)
    total = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{row}: exit {done.returncode}: {done.stderr.strip()[-500:]} {done.stdout.strip()[-500:]}")
    marks = [float(mark) for mark in next(line for line in done.stdout.splitlines() if line.startswith("job ")).split()[1:]]
    return marks[-1] - marks[0], total, [end - begin for begin, end in zip(marks, marks[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1790)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated")
    args = parser.parse_args()
    rows = [row for row in ROWS if row in args.rows.split(",")]
    work = Path(tempfile.mkdtemp(prefix="runv-bench-storage-"))
    try:
        base = make_rootfs(work / "base")
        files = sources(args.files)
        with tarfile.open(base / "job.tar", "w") as tar:
            for index, source in enumerate(files):
                tar.add(source, arcname=f"d{index // 100:02d}/{index:05d}-{source.name}")
        size = sum(f.stat().st_size for f in files)
        config_file = work / "config.toml"
        config_file.write_text(f'[storage]\ncache_dir = "{work / "cache"}"\ncontainers_dir = "{work / "containers"}"\n')
        env = {**os.environ, "RUNV_CONFIG": str(config_file)}
        results: dict[str, list[tuple[float, float, list[float]]]] = {row: [] for row in rows}
        for run in range(args.runs):
            for row in rows:
                path = bundle(base, work / f"bundle-{row}", row, work / "volume")
                results[row].append(run_once(row, path, work, env, run))
        job = {row: statistics.median(r[0] for r in results[row]) for row in rows}
        print(f"{len(files)} Python source files ({size / 1e6:.0f} MB): untar, find, read, grep -r, rm -rf; "
              f"median of {args.runs}, interleaved (TCG, {os.cpu_count()} host cores)\n")
        print("| where the job runs | whole `run` (s) | the job (s) | job / block mode | job / runc | "
              + " | ".join(PHASES) + " |")
        print("|---" * (5 + len(PHASES)) + "|")
        for row in rows:
            whole = statistics.median(r[1] for r in results[row])
            phases = [statistics.median(r[2][i] for r in results[row]) for i in range(len(PHASES))]
            against_block = f"{job[row] / job['block']:.2f}x" if "block" in job else "-"
            against_runc = f"{job[row] / job['runc']:.1f}x" if "runc" in job else "-"
            print(f"| {'runc, host' if row == 'runc' else 'runv ' + row} | {whole:.1f} | {job[row]:.1f} | "
                  f"{against_block} | {against_runc} | " + " | ".join(f"{p:.1f}" for p in phases) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

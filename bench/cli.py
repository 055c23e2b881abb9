"""The CLI's start-up on its hot paths: `runv state ID`, `runv list` and `runv kill ID 9`
(a stopped container: the error path) against a bare `python3 -S -c pass`, the medians
of N runs of each, interleaved, with their ratios; for comparison, `runv state ID` forced
through typer, and the floor: Python importing what `runv state` cannot do without.

No VM: the state directory is a temporary one with records written by runv's own Store.
Bytecode is allowed (PYTHONDONTWRITEBYTECODE unset) and warmed, as an installed runv has it.

    .venv/bin/python bench/cli.py [-n 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RUNV, median

from runv.records import Record, Store

TYPER = [sys.executable, "-c", "from runv.cli.app import main; main(fast=False)"]


def timed_any(argv: list[str], env: dict) -> float:
    """Seconds ``argv`` took, whatever its exit status (kill's error path exits 1)."""
    start = time.perf_counter()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="runs of each (median is reported)")
    n = parser.parse_args().n
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "state")
        for i in range(5):
            store.claim(Record(id=f"box{i}", bundle=f"/bundles/box{i}", rootfs=f"/bundles/box{i}/rootfs",
                               created="2026-01-01T00:00:00Z", status="stopped"))
        runv = [RUNV, "--root", str(store.root)]
        cases = {
            "python3 -S -c pass": [sys.executable, "-S", "-c", "pass"],  # runv's interpreter (`python3` may be a shim)
            "runv state ID": [*runv, "state", "box0"],
            "runv list": [*runv, "list"],
            "runv kill ID 9 (stopped: the error)": [*runv, "kill", "box0", "9"],
            "runv state ID, through typer": [*TYPER, "--root", str(store.root), "state", "box0"],
            # the part of runv state it cannot avoid: the console script's re, json
            "python3 -c 'import re, json'": [sys.executable, "-c", "import re, json"],
        }
        for argv in cases.values():  # warm: bytecode written, files cached
            timed_any(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(n):
            for name, argv in cases.items():
                samples[name].append(timed_any(argv, env))
    bare = median(samples["python3 -S -c pass"])
    print(f"## CLI start-up: median of {n}")
    for name, runs in samples.items():
        print(f"{name:<48} {median(runs) * 1000:8.1f} ms {median(runs) / bare:6.2f} x bare")


if __name__ == "__main__":
    main()

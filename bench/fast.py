"""Every ratio of the "fast by default" table in one run: the boot (cold against a bare
QEMU boot; a template start and a container with volumes and a NIC against cold), the
CLI's start-up (`runv state` against a bare Python) and `runv exec` against `runc exec`,
each bench printing its own baseline measured in the same run.

    .venv/bin/python bench/fast.py [-n 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="boot runs (the CLI and exec benches take 10x and 4x as many)")
    n = parser.parse_args().n
    for script, runs in (("boot.py", n), ("cli.py", 10 * n), ("exec.py", 4 * n)):
        subprocess.run([sys.executable, str(HERE / script), "-n", str(runs)], check=True)
        print()


if __name__ == "__main__":
    main()

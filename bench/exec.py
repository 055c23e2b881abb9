"""`runv exec ID true` against `runc exec ID true` on the same busybox rootfs.

runc (Debian's) runs the same rootfs in namespaces; runv in a VM under whatever
hypervisor `auto` picks here (TCG on a host without usable KVM).

    .venv/bin/python bench/exec.py [-n 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from common import RUNV, busybox_bundle, median, report, timed


def runc_bundle(path: Path) -> Path:
    """The busybox bundle with runc's own default spec (namespaces and all)."""
    busybox_bundle(path, ["sleep", "1000"])
    (path / "config.json").unlink()
    subprocess.run(["runc", "spec"], cwd=path, check=True)
    config = json.loads((path / "config.json").read_text())
    config["process"].update(args=["sleep", "1000"], terminal=False)
    (path / "config.json").write_text(json.dumps(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="execs of each (median is reported)")
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runv = [RUNV, "--root", str(tmp / "runv-state")]
        runc = ["runc", "--root", str(tmp / "runc-state")]
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(runv + ["run", "-d", "--bundle", str(busybox_bundle(tmp / "v", ["sleep", "1000"])), "bench"], check=True, **quiet)
        subprocess.run(runc + ["run", "-d", "--bundle", str(runc_bundle(tmp / "c")), "bench"], check=True, **quiet)
        try:
            runv_runs, runc_runs = [], []
            for _ in range(n):
                runv_runs.append(timed(runv + ["exec", "bench", "true"]))
                runc_runs.append(timed(runc + ["exec", "bench", "true"]))
        finally:
            subprocess.run(runv + ["delete", "--force", "bench"], **quiet)
            subprocess.run(runc + ["delete", "--force", "bench"], **quiet)
    report(
        f"exec: median of {n}",
        [("runc exec true", median(runc_runs)), ("runv exec true", median(runv_runs))],
        ("runv exec / runc exec", median(runv_runs), median(runc_runs)),
    )


if __name__ == "__main__":
    main()

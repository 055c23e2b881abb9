"""This runv against another build of it (an older commit, say), interleaved in one run: a
cold `run true`, a `run true` from the default template, and the host memory of an idle
container (the PSS of its shim and of everything it started, the VMM and its file server, with
the guest's memfds counted whole: :func:`common.container_memory`).

    git worktree add /tmp/before COMMIT && python3 -m venv /tmp/before/.venv
    /tmp/before/.venv/bin/pip install -e /tmp/before -e /tmp/before/plugins/{bundle,qemu,tcg,net}
    RUNV_TEMPLATE_DIR=/tmp/before/templates /tmp/before/.venv/bin/runv \\
        --kernel /tmp/before/guest/kernel --initrd /tmp/before/guest/initrd.img guest build
    .venv/bin/python bench/versus.py --other /tmp/before/.venv/bin/runv \\
        --other-guest /tmp/before/guest/kernel /tmp/before/guest/initrd.img --other-templates /tmp/before/templates [-n 5]

The other build gets its own guest image and template directory: its agent may differ.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import RUNV, busybox_bundle, container_memory

IDLE = 4  # idle containers of each build measured
SETTLE = 15.0  # seconds they idle first


class Build:
    def __init__(self, name: str, runv: str, guest: list[str], templates: str | None, root: Path) -> None:
        self.name, self.runv, self.root = name, runv, root
        self.flags = ["--kernel", guest[0], "--initrd", guest[1]] if guest else []
        self.env = {**os.environ, **({"RUNV_TEMPLATE_DIR": templates} if templates else {})}

    def run(self, *args: str) -> None:
        """``runv ARGS``, its stdio in a file (a shim holds its caller's open), which must succeed."""
        with tempfile.TemporaryFile("w+") as err:
            done = subprocess.run([self.runv, "--root", str(self.root), *self.flags, *args], env=self.env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            err.seek(0)
            if done.returncode != 0:
                raise SystemExit(f"{self.name}: runv {' '.join(args)}: {err.read().strip()}")

    def idle_pss(self, bundle: Path) -> list[float]:
        ids = [f"idle-{self.name}-{k}" for k in range(IDLE)]
        for cid in ids:
            self.run("run", "-d", "--bundle", str(bundle), cid)
        time.sleep(SETTLE)
        totals = []
        for cid in ids:
            shim = json.loads(subprocess.run([self.runv, "--root", str(self.root), "state", cid], capture_output=True,
                                             text=True, check=True).stdout)["pid"]
            totals.append(sum(container_memory(shim).values()))
        for cid in ids:
            self.run("delete", "--force", cid)
        return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="the other build's runv")
    parser.add_argument("--other-guest", nargs=2, metavar=("KERNEL", "INITRD"), default=[])
    parser.add_argument("--other-templates", help="the other build's template directory")
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        builds = [Build("this", RUNV, [], None, tmp / "this"), Build("other", args.other, args.other_guest, args.other_templates, tmp / "other")]
        bundle = busybox_bundle(tmp / "true", ["true"])
        starts = {(b.name, kind): [] for b in builds for kind in ("cold", "template")}
        for i in range(args.n):  # interleaved: drift in the machine's load hits both alike
            for build in builds:
                for kind, flags in (("cold", ["--template", "off"]), ("template", [])):
                    started = time.perf_counter()
                    build.run(*flags, "run", "--bundle", str(bundle), f"{kind}-{i}")
                    starts[(build.name, kind)].append(time.perf_counter() - started)
        idle = {build.name: build.idle_pss(busybox_bundle(tmp / "idle", ["sleep", "600"])) for build in builds}
    print(f"## this runv against {args.other}: medians of {args.n}, interleaved; idle PSS of {IDLE} containers")
    for kind in ("cold", "template"):
        this, other = (statistics.median(starts[(name, kind)]) for name in ("this", "other"))
        print(f"{'run true, ' + kind:<28} this {this:7.3f} s   other {other:7.3f} s   this/other {this / other:5.2f}x")
    this, other = (statistics.median(idle[name]) for name in ("this", "other"))
    print(f"{'idle container PSS':<28} this {this:7.1f} MiB other {other:7.1f} MiB this/other {this / other:5.2f}x")


if __name__ == "__main__":
    main()

"""Pods: the time to add a container to a running pod (``runv create`` + ``start`` of a
member) against a cold and a template start of its own VM, and the memory (PSS, summed
over the QEMU processes) of a 3-container pod against 3 separate VMs, in one run.

The pod's containers share a named network namespace (made and removed here), which is
how runv finds the pod; a template of the default shape is made in a temporary directory.

    .venv/bin/python bench/pods.py [-n 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import RUNV, busybox_bundle, median, timed
from templates import pss_kib

from runv.testing import vm_processes_in


def in_netns(bundle: Path, netns: str) -> Path:
    config = json.loads((bundle / "config.json").read_text())
    config["linux"] = {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": netns}]}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def runv(root: Path, *args: str, template: str = "auto") -> list[str]:
    return [RUNV, "--root", str(root), "--template", template, *args]


def start(root: Path, bundle: Path, cid: str, template: str = "auto") -> float:
    """Seconds for ``create`` + ``start`` of an idle container."""
    return timed(runv(root, "create", "--bundle", str(bundle), cid, template=template)) + timed(runv(root, "start", cid))


def delete(root: Path, *ids: str) -> None:
    for cid in ids:
        subprocess.run(runv(root, "delete", "--force", cid), capture_output=True)


def pss_mib(root: Path, count: int) -> float:
    time.sleep(3)  # let the guests settle
    pids = vm_processes_in(root)
    assert len(pids) == count, f"{len(pids)} VMs running, expected {count}"
    return sum(pss_kib(pid) for pid in pids) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs of each start (median is reported)")
    args = parser.parse_args()
    name = f"rvbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    netns = f"/run/netns/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["RUNV_TEMPLATE_DIR"] = f"{tmp}/templates"
            subprocess.run([RUNV, "template", "create", "bench"], check=True, stdout=subprocess.DEVNULL)
            root = Path(tmp) / "state"
            sleeper = busybox_bundle(Path(tmp) / "alone", ["sleep", "1000"])
            member = in_netns(busybox_bundle(Path(tmp) / "member", ["sleep", "1000"]), netns)
            subprocess.run(runv(root, "run", "-d", "--bundle", str(member), "sandbox"), check=True)
            times = {"join": [], "template": [], "cold": []}
            for i in range(args.n):  # interleaved, so drift in machine load hits all alike
                times["join"].append(start(root, member, f"member-{i}"))
                delete(root, f"member-{i}")
                times["template"].append(start(root, sleeper, f"tpl-{i}"))
                delete(root, f"tpl-{i}")
                times["cold"].append(start(root, sleeper, f"cold-{i}", template="off"))
                delete(root, f"cold-{i}")
            for i in (1, 2):
                start(root, member, f"member-{i}")
            pod = pss_mib(root, 1)
            delete(root, "member-1", "member-2", "sandbox")
            for i in range(3):
                start(root, sleeper, f"vm-{i}")
            separate = pss_mib(root, 3)
            delete(root, "vm-0", "vm-1", "vm-2")
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    join, template, cold = (median(times[k]) for k in ("join", "template", "cold"))
    print(f"## pods: median of {args.n} create+start of an idle container")
    print(f"{'join a running pod':<48} {join:8.3f} s")
    print(f"{'its own VM, from a template':<48} {template:8.3f} s  (join: {join / template:.2f}x)")
    print(f"{'its own VM, cold boot':<48} {cold:8.3f} s  (join: {join / cold:.2f}x)")
    print(f"{'PSS of a 3-container pod (one VM)':<48} {pod:8.0f} MiB")
    print(f"{'PSS of 3 containers in 3 VMs (template)':<48} {separate:8.0f} MiB  (pod: {pod / separate:.2f}x)")


if __name__ == "__main__":
    main()

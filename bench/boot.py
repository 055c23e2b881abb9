"""`runv run` of `true` against a bare QEMU boot of the same kernel and initrd.

The bare boot runs the guest's first userspace program (/sbin/runv-halt, which powers
off at once) with the machine options runv uses, so the cold ratio is runv's own
overhead: the agent's start, the rootfs share, the shim and the CLI. The template lines
show what `--template auto` (the default) does to it (they need the default template,
which `runv guest build` makes): a bare container, and one with what a client's container
has, two bind mounts (a directory and a file) and a NIC (a veth into a network namespace
the bench makes and removes), with default flags.

    .venv/bin/python bench/boot.py [-n 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from common import RUNV, busybox_bundle, median, report, timed

KERNEL = "/var/lib/runv/kernel"
INITRD = "/var/lib/runv/initrd.img"


def bare_boot(init: str = "/sbin/runv-halt") -> list[str]:
    """A bare QEMU of runv's kernel and initrd, its first process ``init`` (default: power off at once)."""
    return [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-bios", "qboot.rom", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", KERNEL, "-initrd", INITRD, "-serial", "null",
        "-append", f"console=ttyS0 panic=-1 quiet rdinit={init}",
    ]


@contextmanager
def network_namespace(name: str):
    """A network namespace ``name`` with a veth (10.99.0.2/24) from the host's (10.99.0.1)."""
    ip = ["ip", "netns", "exec", name, "ip"]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "link", "add", f"{name}-h", "type", "veth", "peer", "name", "eth0", "netns", name], check=True)
        subprocess.run(["ip", "addr", "add", "10.99.0.1/24", "dev", f"{name}-h"], check=True)
        subprocess.run(["ip", "link", "set", f"{name}-h", "up"], check=True)
        subprocess.run([*ip, "addr", "add", "10.99.0.2/24", "dev", "eth0"], check=True)
        subprocess.run([*ip, "link", "set", "eth0", "up"], check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "link", "delete", f"{name}-h"], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def with_volumes_and_nic(bundle: Path, tmp: Path, netns: str) -> Path:
    """``bundle`` with two bind mounts (a directory, a file) and the network namespace ``netns``."""
    (tmp / "data").mkdir()
    (tmp / "hosts").write_text("10.99.0.1 host\n")
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"] = [{"destination": "/data", "type": "bind", "source": str(tmp / "data"), "options": ["rbind"]},
                        {"destination": "/etc/hosts", "type": "bind", "source": str(tmp / "hosts"), "options": ["rbind", "ro"]}]
    config["linux"] = {"namespaces": [{"type": "network", "path": netns}]}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs of each (median is reported)")
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp, network_namespace(f"rvb{os.getpid()}") as netns:
        tmp = Path(tmp)
        bundle = busybox_bundle(tmp / "bundle", ["true"])
        dressed = with_volumes_and_nic(busybox_bundle(tmp / "dressed", ["true"]), tmp, netns)
        runv = [RUNV, "--root", str(tmp / "state")]
        bare, cold, warm, full = [], [], [], []
        for i in range(n):  # interleaved, so drift in machine load hits all alike
            bare.append(timed(bare_boot()))
            cold.append(timed(runv + ["--template", "off", "run", "--bundle", str(bundle), f"cold-{i}"]))
            warm.append(timed(runv + ["run", "--bundle", str(bundle), f"warm-{i}"]))
            full.append(timed(runv + ["run", "--bundle", str(dressed), f"full-{i}"]))
    report(
        f"boot: median of {n}",
        [
            ("bare QEMU boot to first userspace instruction", median(bare)),
            ("runv run true, cold boot (--template off)", median(cold)),
            ("runv run true, default flags (a template)", median(warm)),
            ("... with 2 bind mounts and a NIC, default flags", median(full)),
        ],
        ("runv run (cold) / bare boot", median(cold), median(bare)),
    )
    for label, value in (("runv run (template) / cold", median(warm)), ("2 volumes + NIC (template) / cold", median(full))):
        print(f"{label:<48} {value / median(cold):8.2f} x")


if __name__ == "__main__":
    main()

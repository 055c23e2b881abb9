"""virtio-9p against virtio-fs for the container rootfs share, on the same tree, in one run.

Each run boots runv's kernel and initrd straight into a busybox script (no agent) that
loads the modules, mounts the share read-only at /mnt and times, inside the guest (from
/proc/uptime): ``find`` over the tree, then reading every file (``tar c``). 9p is QEMU's
own server; virtio-fs needs a virtiofsd per VM and a shared memfd memory backend.

    .venv/bin/python bench/sharefs.py [--files 5000] [-n 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

KERNEL = "/var/lib/runv/kernel"
INITRD = "/var/lib/runv/initrd.img"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
SCRIPT = (
    "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; "
    "modprobe -a $(cat /etc/runv/modules); "
    "mount -t $FSTYPE -o $OPTIONS tree /mnt || echo MOUNT-FAILED; "
    "a=$(cut -d' ' -f1 /proc/uptime); n=$(find /mnt | wc -l); b=$(cut -d' ' -f1 /proc/uptime); "
    "tar cf - -C /mnt . | wc -c >/dev/null; c=$(cut -d' ' -f1 /proc/uptime); "
    "echo RESULT $n $a $b $c; poweroff -f"
)


def make_tree(root: Path, files: int) -> None:
    """``files`` files of 1 KiB in directories of 50, like a small distribution tree."""
    for i in range(files):
        d = root / f"d{i // 50:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(os.urandom(1024))


def qemu(extra: list[str], fstype: str, options: str) -> list[str]:
    script = SCRIPT.replace("$FSTYPE", fstype).replace("$OPTIONS", options)
    return [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "256", "-smp", "1", "-nodefaults",
        "-no-user-config", "-display", "none", "-no-reboot", "-kernel", KERNEL, "-initrd", INITRD,
        "-serial", "stdio", "-append", f'console=ttyS0 panic=-1 quiet rdinit=/bin/busybox -- sh -c "{script}"',
        *extra,
    ]


def run_9p(tree: Path, cache: str = "") -> tuple[float, float, int]:
    extra = ["-fsdev", f"local,id=fs0,path={tree},security_model=passthrough,readonly=on",
             "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=tree"]
    options = "trans=virtio,version=9p2000.L,msize=262144,ro" + (f",cache={cache}" if cache else "")
    return parse(subprocess.run(qemu(extra, "9p", options), capture_output=True, text=True, timeout=600).stdout)


def run_virtiofs(tree: Path, tmp: Path) -> tuple[float, float, int]:
    sock = tmp / "vfs.sock"
    daemon = subprocess.Popen([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={tree}", "-o", "cache=auto"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not sock.exists():
            time.sleep(0.01)
        extra = ["-chardev", f"socket,id=vfs,path={sock}", "-device", "vhost-user-fs-pci,chardev=vfs,tag=tree",
                 "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-machine", "memory-backend=mem"]
        out = subprocess.run(qemu(extra, "virtiofs", "ro"), capture_output=True, text=True, timeout=600).stdout
    finally:
        daemon.kill()
        daemon.wait()
    return parse(out)


def parse(console: str) -> tuple[float, float, int]:
    match = re.search(r"RESULT (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", console)
    if not match:
        raise SystemExit(f"the guest printed no result: {console[-500:]}")
    n, a, b, c = match.groups()
    return float(b) - float(a), float(c) - float(b), int(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("-n", type=int, default=3, help="runs of each (median is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tree(tmp / "tree", args.files)
        results = {"9p (runv's options, uncached)": [], "9p, cache=loose": [], "virtio-fs, cache=auto": []}
        for _ in range(args.n):
            results["9p (runv's options, uncached)"].append(run_9p(tmp / "tree"))
            results["9p, cache=loose"].append(run_9p(tmp / "tree", "loose"))
            results["virtio-fs, cache=auto"].append(run_virtiofs(tmp / "tree", tmp))
    print(f"## sharefs: {args.files} files of 1 KiB, median of {args.n}, seconds in the guest")
    print("| share | entries | find | read all (tar) |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {runs[0][2]} | {statistics.median(r[0] for r in runs):.2f} | {statistics.median(r[1] for r in runs):.2f} |")


if __name__ == "__main__":
    main()

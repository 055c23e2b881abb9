"""What a guest root can do to the host through each shared-filesystem choice, and what each costs, in one run.

For virtio-9p (QEMU's own server) with ``security_model=passthrough`` (runv's), ``mapped-xattr``,
``mapped-file`` and ``none`` — jailed as runv jails QEMU (capability
bounding set ``chown, dac_override, dac_read_search, fowner``, the setuid/setgid seccomp
filter, its private root, QEMU's ``-sandbox``: :mod:`runv.api.jail`), plus passthrough unjailed for reference — and for virtio-fs
(Debian's C ``virtiofsd -o sandbox=namespace``, with and without ``-o xattr`` and
``-o modcaps=-mknod:-setfcap,killpriv_v2``; and as runv runs it, :mod:`runv_qemu.virtiofs`:
jailed, its filter, chrooted in the share), one VM each boots runv's kernel and initrd into
a busybox script (no agent) that mounts the share read-write and

* times ``find`` over, then reading every file of (``tar c``), a tree of 1 KiB files;
* as root, tries ``mknod c 1 3``, ``chmod u+s``, writing a ``security.capability`` xattr
  (what ``setcap cap_net_raw+ep`` writes; from python3.11) and ``chown 1234:1234``, and
  prints what it got and what it sees afterwards.

After the VM exits the host looks at the same files: a real device node, a setuid bit, a
file capability, the real owner (what Podman's diff/commit reads). Prints a markdown table.

    .venv/bin/python bench/sharefs_security.py [--files 5000] [-n 3]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharefs import INITRD, KERNEL, VIRTIOFSD, make_tree

from runv.api import NINEP_VIRTIO, Share, jail, vmmcgroup
from runv.guest.cpio import Archive
from runv.testing import vm_spec
from runv_qemu import virtiofs
from runv_qemu.command import SANDBOX

PROBE = r"""
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
modprobe -a $(cat /etc/runv/modules)
mount -t @FSTYPE@ -o @OPTIONS@ share /mnt || echo MOUNT-FAILED
up() { cut -d' ' -f1 /proc/uptime; }
a=$(up); n=$(find /mnt/tree | wc -l); b=$(up); tar cf - -C /mnt/tree . | wc -c >/dev/null; c=$(up)
echo RESULT $n $a $b $c
cd /mnt/probe
try() { name=$1; shift; if out=$("$@" 2>&1); then echo "PROBE $name ok"; else echo "PROBE $name $(echo "$out" | tail -1)"; fi; }
try mknod mknod node c 1 3
touch suid; try suid chmod u+s suid; echo "SEEN suid $(stat -c %a suid)"
touch cap
try setcap /usr/bin/python3.11 -S -c "import os; os.setxattr('cap', 'security.capability', bytes.fromhex('0100000200200000000000000000000000000000'))"
touch owned; try chown chown 1234:1234 owned; echo "SEEN chown $(stat -c %u:%g owned)"
cd /; sync; umount /mnt; poweroff -f
"""
NINEP_MODELS = {  # name: (security_model, jailed as runv jails QEMU)
    "9p passthrough, not jailed": ("passthrough", False),
    "9p passthrough, jailed (runv)": ("passthrough", True),
    "9p mapped-xattr, jailed": ("mapped-xattr", True),
    "9p mapped-file, jailed": ("mapped-file", True),
    "9p none, jailed": ("none", True),
}
VIRTIOFS_OPTIONS = {  # name: virtiofsd -o options
    "virtio-fs sandbox=namespace (defaults: no_xattr)": ["sandbox=namespace"],
    "virtio-fs sandbox=namespace,xattr": ["sandbox=namespace", "xattr"],
    "virtio-fs sandbox=namespace,xattr,modcaps=-mknod:-setfcap,killpriv_v2":
        ["sandbox=namespace", "xattr", "modcaps=-mknod:-setfcap", "killpriv_v2"],
}
RUNV_VIRTIOFS = "virtio-fs as runv runs it (jailed, its filter, chroot, xattr, modcaps=-mknod:-setfcap:-fsetid)"
CAPABILITY = "security.capability"


def initrd_with_probe(path: Path, fstype: str, options: str) -> Path:
    """runv's initrd with /probe.sh appended as a second (uncompressed) cpio archive:
    the kernel unpacks concatenated archives, and the script is too long for a command line."""
    archive = Archive()
    archive.add_file("probe.sh", PROBE.replace("@FSTYPE@", fstype).replace("@OPTIONS@", options).encode(), 0o755)
    extra = io.BytesIO()
    archive.write(extra)
    path.write_bytes(Path(INITRD).read_bytes() + gzip.compress(extra.getvalue()))
    return path


def qemu(initrd: Path, extra: list[str]) -> list[str]:
    return [
        shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "256",
        "-smp", "1", "-nodefaults",
        "-no-user-config", "-display", "none", "-no-reboot", "-kernel", KERNEL, "-initrd", str(initrd),
        "-serial", "stdio", "-append", "console=ttyS0 panic=-1 quiet rdinit=/bin/busybox -- sh /probe.sh", *extra,
    ]


def fresh_share(tmp: Path) -> Path:
    """The shared directory: the timed tree (made once) and an empty ``probe`` directory."""
    share = tmp / "share"
    shutil.rmtree(share / "probe", ignore_errors=True)
    for metadata in share.glob(".virtfs_metadata"):  # mapped-file's
        shutil.rmtree(metadata)
    (share / "probe").mkdir(mode=0o755)
    return share


def run_9p(tmp: Path, model: str, jailed: bool) -> dict:
    share = fresh_share(tmp)
    initrd = initrd_with_probe(tmp / "initrd.img", "9p", NINEP_VIRTIO.options)
    argv = qemu(initrd, ["-fsdev", f"local,id=fs0,path={share},security_model={model},multidevs=remap",
                         "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=share"])
    if jailed:
        root = tmp / "jail"
        root.mkdir(exist_ok=True)
        binds = jail.system_binds(argv[0]) + [jail.Bind(KERNEL, "file"), jail.Bind(str(initrd), "file"),
                                              jail.Bind(str(share), "dir", True)]
        argv = jail.command([*argv, "-sandbox", SANDBOX], root=root, cwd=tmp, binds=binds, fd_dir=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    return parse(result.stdout + result.stderr, share)


def run_virtiofs(tmp: Path, options: list[str]) -> dict:
    share = fresh_share(tmp)
    sock = tmp / "vfs.sock"
    sock.unlink(missing_ok=True)
    argv = [VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={share}", "-o", "cache=auto"]
    for option in options:
        argv += ["-o", option]
    daemon = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"virtiofsd {' '.join(options)} did not start: {daemon.stderr.read()[-300:]}")
            time.sleep(0.01)
        initrd = initrd_with_probe(tmp / "initrd.img", "virtiofs", "rw")
        extra = ["-chardev", f"socket,id=vfs,path={sock}", "-device", "vhost-user-fs-pci,chardev=vfs,tag=share",
                 "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-machine", "memory-backend=mem"]
        result = subprocess.run(qemu(initrd, extra), capture_output=True, text=True, timeout=900)
    finally:
        daemon.kill()
        daemon.wait()
    return parse(result.stdout + result.stderr, share)


def run_runv_virtiofs(tmp: Path) -> dict:
    """The probe over the virtiofsd runv starts (runv_qemu.virtiofs.start), in a cgroup of its own."""
    share = fresh_share(tmp)
    (tmp / "jail").mkdir(exist_ok=True)
    vm = vm_spec(tmp, name="bench")
    cgroup = vmmcgroup.for_vm(tmp)
    cgroup.create(*vmmcgroup.limits(256, 1))
    try:
        server = virtiofs.start(vm, 0, Share("share", share), cgroup, tmp / "jail")
        fd = server.connection.fileno()
        initrd = initrd_with_probe(tmp / "initrd.img", "virtiofs", "rw")
        extra = ["-chardev", f"socket,id=vfs,fd={fd}", "-device", "vhost-user-fs-pci,chardev=vfs,tag=share",
                 "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-machine", "memory-backend=mem"]
        result = subprocess.run(qemu(initrd, extra), capture_output=True, text=True, timeout=900, pass_fds=[fd])
        server.connection.close()
    finally:
        cgroup.remove()
    return parse(result.stdout + result.stderr, share)


def parse(console: str, share: Path) -> dict:
    """The guest's timings and answers, and what the host sees in the probe directory."""
    match = re.search(r"RESULT (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", console)
    if not match or "MOUNT-FAILED" in console:
        raise SystemExit(f"the guest printed no result: {console[-800:]}")
    n, a, b, c = match.groups()
    guest = dict(re.findall(r"^PROBE (\w+) (.*?)\r?$", console, re.M))
    seen = dict(re.findall(r"^SEEN (\w+) (.*?)\r?$", console, re.M))
    return {"find": float(b) - float(a), "read": float(c) - float(b), "entries": int(n),
            "guest": guest, "seen": seen, "host": host_view(share / "probe")}


def host_view(probe: Path) -> dict:
    """What the guest's attempts left on the host."""
    view = {}
    try:
        st = os.lstat(probe / "node")
        view["mknod"] = (f"char device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISCHR(st.st_mode)
                         else "regular file" if stat.S_ISREG(st.st_mode) else oct(stat.S_IFMT(st.st_mode)))
    except FileNotFoundError:
        view["mknod"] = "nothing"
    view["suid"] = f"mode {stat.S_IMODE(os.lstat(probe / 'suid').st_mode):o}"
    names = os.listxattr(probe / "cap", follow_symlinks=False)
    view["setcap"] = (f"{CAPABILITY} set" if CAPABILITY in names
                      else f"only {', '.join(names)}" if names else "no xattr")
    st = os.lstat(probe / "owned")
    view["chown"] = f"{st.st_uid}:{st.st_gid}"
    return view


def short(answer: str) -> str:
    """A guest error line, shortened to its errno words."""
    words = answer.split(": ")[-1].strip(" '")
    for known in ("Operation not permitted", "Operation not supported", "Permission denied", "Not supported"):
        if known.lower() in answer.lower():
            return known
    return words or answer


def cells(result: dict) -> list[str]:
    guest, seen, host = result["guest"], result["seen"], result["host"]
    return [
        f"{short(guest.get('mknod', '?'))} → host: {host['mknod']}",
        f"{short(guest.get('suid', '?'))} (guest sees {seen.get('suid', '?')}) → host: {host['suid']}",
        f"{short(guest.get('setcap', '?'))} → host: {host['setcap']}",
        f"{short(guest.get('chown', '?'))} (guest sees {seen.get('chown', '?')}) → host: {host['chown']}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("-n", type=int, default=3, help="runs of each (median times are reported)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the 9p and virtio-fs servers run as root under runv")
    runs: dict[str, list[dict]] = {name: [] for name in (*NINEP_MODELS, *VIRTIOFS_OPTIONS, RUNV_VIRTIOFS)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tree(tmp / "share" / "tree", args.files)
        for _ in range(args.n):
            for name, (model, jailed) in NINEP_MODELS.items():
                runs[name].append(run_9p(tmp, model, jailed))
            for name, options in VIRTIOFS_OPTIONS.items():
                runs[name].append(run_virtiofs(tmp, options))
            runs[RUNV_VIRTIOFS].append(run_runv_virtiofs(tmp))
    print(f"## sharefs security: {args.files} files of 1 KiB, median of {args.n}, seconds in the guest; "
          "guest root's answer → what the host has afterwards")
    print("| share | find | read all (tar) | mknod c 1 3 | chmod u+s | security.capability xattr | chown 1234:1234 |")
    print("|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        find = statistics.median(r["find"] for r in results)
        read = statistics.median(r["read"] for r in results)
        print(f"| {name} | {find:.2f} | {read:.2f} | " + " | ".join(cells(results[-1])) + " |")


if __name__ == "__main__":
    main()

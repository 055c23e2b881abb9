"""The guest's userland as a read-only EROFS image beside the initrd (``<initrd>.userland``):
the initrd's ``/usr`` (Python and its libraries, the agent, the kernel modules, busybox's
applet links). A hypervisor that can map a file into its guests with DAX (QEMU's
virtio-pmem; ``Capabilities.userland``) gives it to every VM, which boots the lean initrd
(``<initrd>.lean``: the initrd without the userland but for the kernel modules /init loads
before it mounts the image): /init mounts the image over ``/usr`` and deletes those
modules, so the userland is the host's page cache, once for all VMs, instead of 19 MiB of
RAM in each, and the kernel unpacks 4.9 MB instead of 20. Hypervisors that cannot boot
the whole initrd. EROFS, uncompressed (what DAX maps): its module is a tenth of ext4's
with jbd2 (0.24 MB against 2.5 MB), which a cold boot loads under TCG."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from runv.api.tools import run_tool
from runv.guest.cpio import Archive

USR = "usr"
MODULES = "usr/lib/modules"  # the lean initrd keeps those /init loads before the image is mounted
BOOT_MODULES = "etc/runv/modules"  # their names, in load order (runv.guest.builder)
FILESYSTEM = "erofs"  # the image's, loaded as /init mounts it
ALIGN = 2 << 20  # a memory device's size, in whole 2 MiB pages


def image(archive: Archive) -> bytes:
    """The ``/usr`` tree of ``archive`` as an uncompressed EROFS image (its blocks are pages,
    as DAX maps them), owned by root, padded to a whole number of 2 MiB pages."""
    with tempfile.TemporaryDirectory(prefix="runv-userland.") as scratch:
        for name, entry in sorted(archive.entries.items()):
            if name != USR and not name.startswith(USR + "/"):
                continue
            target = Path(scratch, name)
            if stat.S_ISDIR(entry.mode):
                target.mkdir(mode=stat.S_IMODE(entry.mode), exist_ok=True)
            elif stat.S_ISLNK(entry.mode):
                os.symlink(entry.data.decode(), target)
            elif stat.S_ISREG(entry.mode):
                target.write_bytes(entry.data)
                target.chmod(stat.S_IMODE(entry.mode))
        out = Path(scratch, "image")
        run_tool(["mkfs.erofs", "--quiet", "--all-root", "-T0", str(out), str(Path(scratch, USR))],
                 "cannot make the guest's userland image", install="apt-get install erofs-utils")
        with open(out, "r+b") as f:
            f.truncate(-(-os.fstat(f.fileno()).st_size // ALIGN) * ALIGN)
        return out.read_bytes()


def lean(archive: Archive) -> Archive:
    """``archive`` without the userland the image holds, but for what /init needs before it
    mounts the image: the modules it loads at boot (``/etc/runv/modules``) and EROFS's, with
    the tables busybox's modprobe reads."""
    modules_dir = next(name for name in archive.entries if name.startswith(MODULES + "/") and name.count("/") == 3)
    table = archive.entries[f"{modules_dir}/modules.dep"].data.decode()
    deps = {path: line.split() for path, _, line in (row.partition(":") for row in table.splitlines())}
    by_name = {Path(path).name.removesuffix(".ko").replace("-", "_"): path for path in deps}
    wanted = archive.entries[BOOT_MODULES].data.decode().split() + [FILESYSTEM]
    needed = {f"{modules_dir}/{path}" for name in wanted if name in by_name
              for path in (by_name[name], *deps[by_name[name]])}
    kept = Archive()
    for name, entry in archive.entries.items():
        userland = name == USR or name.startswith(USR + "/")
        module = name.endswith(".ko")
        inside = name == MODULES or name.startswith(MODULES + "/")
        if not userland or (inside and (not module or name in needed)) or MODULES.startswith(name + "/"):
            kept.entries[name] = entry
    return kept

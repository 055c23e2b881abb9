"""What the test layers share besides fixtures: the runv command, the guest files, busybox
root filesystems. (A module of its own: ``from conftest import`` is ambiguous with two layers.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

RUNV = str(Path(sys.executable).with_name("runv"))
BUSYBOX = "/bin/busybox"
KERNEL = Path(os.environ.get("RUNV_TEST_KERNEL", "/var/lib/runv/kernel"))
INITRD = Path(os.environ.get("RUNV_TEST_INITRD", "/var/lib/runv/initrd.img"))


def make_rootfs(path: Path) -> Path:
    """A minimal busybox root filesystem (statically linked, so nothing else is needed)."""
    for sub in ("bin", "proc", "sys", "dev", "tmp", "etc", "root"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = path / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return path

"""What tests need of the host: the ``runv`` command beside this Python, the guest files the VM
tests boot (and the members of an initrd), busybox root filesystems, commands run with their
output through files, fake programs and cgroup trees, what containerd watches for OOM kills,
and the background template makers a test must not leave running.

Nothing here imports pytest; runv's own test layers (``tests/``) and the plugins' and
examples' tests (``plugins/*/tests``, ``examples/*/tests``) share these.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

RUNV = str(Path(sys.executable).with_name("runv"))  # the console script installed with this Python's runv
BUSYBOX = "/bin/busybox"
KERNEL = Path(os.environ.get("RUNV_TEST_KERNEL", "/var/lib/runv/kernel"))  # what `runv guest build` makes
INITRD = Path(os.environ.get("RUNV_TEST_INITRD", "/var/lib/runv/initrd.img"))


class Member(NamedTuple):
    """One entry of a newc cpio archive."""

    name: str
    mode: int
    uid: int
    gid: int
    data: bytes
    rdev: tuple[int, int]


def read_newc(archive: bytes) -> list[Member]:
    """The members of a newc cpio archive (an initrd ``runv guest build`` wrote) up to its
    trailer; ValueError where its magic, its 4-byte alignment or its end is wrong."""
    members, position = [], 0
    while True:
        if archive[position : position + 6] != b"070701":
            raise ValueError(f"no newc header at offset {position}")
        fields = [int(archive[position + 6 + 8 * i : position + 14 + 8 * i], 16) for i in range(13)]
        _ino, mode, uid, gid, _nlink, _mtime, size, _maj, _min, rmajor, rminor, namesize, _check = fields
        name = archive[position + 110 : position + 110 + namesize - 1].decode()
        position += 110 + namesize
        if archive[position : position + (-position % 4)] != b"\0" * (-position % 4):
            raise ValueError(f"{name}: its name is not padded with NULs to 4 bytes")
        position += -position % 4
        data = archive[position : position + size]
        position += size + (-size % 4)
        if name == "TRAILER!!!":
            if position != len(archive):
                raise ValueError(f"{len(archive) - position} bytes after the trailer")
            return members
        members.append(Member(name, mode, uid, gid, data, (rmajor, rminor)))


def make_rootfs(path: Path) -> Path:
    """A minimal busybox root filesystem at ``path`` (busybox is static: nothing else is needed)."""
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


def add_host_binary(binary: Path, rootfs: Path) -> None:
    """``binary`` (a host program or shared library) and every library it loads, each at its
    own path in ``rootfs``, symlinks resolved: enough to run it there."""
    from runv.guest.builder import shared_libraries

    for path in (binary, *shared_libraries(binary)):
        target = rootfs / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path.resolve(), target)


PYTHON = Path("/usr/bin/python3.11")


def add_python(rootfs: Path) -> str:
    """Debian's python3.11 made runnable in ``rootfs`` as ``python3.11 -S -I``: its binary
    and libraries, the encodings package and the os.py its start looks for (the rest of what
    a one-line script needs is frozen in): for a test container's system calls busybox has no
    applet for (``os.setxattr``). Returns its path in the container."""
    import sysconfig

    add_host_binary(PYTHON, rootfs)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(stdlib / "encodings", rootfs / str(stdlib).lstrip("/") / "encodings", dirs_exist_ok=True)
    shutil.copy2(stdlib / "os.py", rootfs / str(stdlib).lstrip("/") / "os.py")
    return str(PYTHON)


def run_captured(argv: list[str], *, check: bool = False, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``argv`` with its output through files, not pipes (a shim keeps its caller's
    stdio open for the container's life, as runc's container process does); text output."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        kwargs.setdefault("stdout", out)
        kwargs.setdefault("stderr", err)
        result = subprocess.run(argv, timeout=timeout, **kwargs)
        out.seek(0)
        err.seek(0)
        result.stdout, result.stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr}")
    return result


def fake_program(path: Path, script: str, interpreter: str = "/bin/sh") -> Path:
    """An executable at ``path`` running ``script`` with ``interpreter`` (its ``#!`` line): a
    stand-in for a VMM or tool that behaves as the real one does towards runv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{interpreter}\n{script}")
    path.chmod(0o755)
    return path


def guest_memory(pids: list[int]) -> int:
    """Bytes held by the memfds ``pids`` have open (a VM's RAM and hot-plugged memory): shared
    memory that costs the host each page once it is written, whether or not a process maps it."""
    held: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith("/memfd:"):
                    st = os.stat(fd)
                    held[st.st_ino] = st.st_blocks * 512
            except OSError:
                continue  # closed meanwhile
    return sum(held.values())


def fake_cgroup_v2(base: Path) -> Path:
    """A directory that runv.api.vmmcgroup takes for a cgroup v2 mount."""
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpu io memory pids\n")
    return base


def fake_cgroup_v1(base: Path) -> Path:
    """A directory that runv.api.vmmcgroup takes for cgroup v1's mounts (memory, pids, cpu)."""
    for controller in ("memory", "pids", "cpu"):
        (base / controller).mkdir(parents=True)
    return base


class OomWatch:
    """What containerd's shim watches for a container's OOM kills (Docker's ``OOMKilled``):
    the memory cgroup of the container's PID, through an eventfd on its
    ``memory.oom_control`` (cgroup v1) or the ``oom_kill`` count of its ``memory.events`` (v2)."""

    def __init__(self, pid: int, base: Path = Path("/sys/fs/cgroup")) -> None:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        self.v2 = (base / "cgroup.controllers").exists()
        path = next(p for _, controllers, p in lines if (controllers == "" if self.v2 else "memory" in controllers.split(",")))
        self.directory = base / ("" if self.v2 else "memory") / path.lstrip("/")
        if self.v2:
            self.seen = self.kills()
            return
        self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        control = os.open(self.directory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (self.directory / "cgroup.event_control").write_text(f"{self.eventfd} {control}")
        finally:
            os.close(control)

    def kills(self) -> int:
        """The cgroup's ``oom_kill`` count (v1's ``memory.oom_control`` has one too)."""
        text = (self.directory / ("memory.events" if self.v2 else "memory.oom_control")).read_text()
        return int(dict(line.split() for line in text.splitlines()).get("oom_kill", 0))

    def fired(self, timeout: float) -> bool:
        """Whether an OOM in the cgroup was notified within ``timeout`` seconds."""
        if self.v2:
            deadline = time.monotonic() + timeout
            while self.kills() == self.seen and time.monotonic() < deadline:
                time.sleep(0.05)
            return self.kills() > self.seen
        return bool(select.select([self.eventfd], [], [], timeout)[0])

    def close(self) -> None:
        if not self.v2:
            os.close(self.eventfd)


def emptied(directory: Path) -> None:
    """What cgroupfs does on rmdir: the control files go with the directory (here: by hand)."""
    for child in directory.rglob("*"):
        if child.is_file():
            child.unlink()


def template_makers() -> list[int]:
    """PIDs of the processes making a template in the background (runv.templates.background)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"runv.templates.background" in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def wait_for_template_makers(timeout: float = 180) -> None:
    """Waits until no template is being made in the background (its VM must not outlive a test)."""
    deadline = time.monotonic() + timeout
    while template_makers():
        assert time.monotonic() < deadline, f"template makers still running after {timeout} s: {template_makers()}"
        time.sleep(0.2)

"""The guest image builder for real: a build from Debian's kernel package, complete, up to date
and reproducible, booted to halt under QEMU (its parts: tests/unit/test_guest_builder.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from runv.guest import builder, kernel
from runv.testing.host import read_newc

needs_host_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "apt-get", "dpkg-deb")) or os.geteuid() != 0,
    reason="needs root, apt, dpkg-deb and qemu-system-x86_64",
)


@pytest.fixture(scope="module")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A guest image built into a temporary directory (the kernel package comes from /var/cache/runv)."""
    directory = tmp_path_factory.mktemp("guest")
    kernel_path, initrd_path = directory / "vmlinux", directory / "initrd.img"
    assert builder.build_guest(kernel_path, initrd_path, progress=lambda line: None)
    return kernel_path, initrd_path


@needs_host_tools
def test_built_image_is_complete_and_up_to_date(built_image: tuple[Path, Path]) -> None:
    kernel_path, initrd_path = built_image
    assert kernel_path.read_bytes()[:4] == b"\x7fELF"
    members = {member.name: member for member in read_newc(initrd_path.read_bytes())}
    listed = members["etc/runv/modules"].data.decode().split()  # loaded by /init with modprobe -a
    modules_dir = next(name for name in members if name.startswith("usr/lib/modules/") and name.count("/") == 3)
    dep = dict(line.split(":", 1) for line in members[f"{modules_dir}/modules.dep"].data.decode().splitlines())
    shipped = {kernel.module_name(path): path for path in dep}
    assert "virtio_pci" in listed and "ext4" not in listed and set(listed) <= set(shipped)
    assert all(f"{modules_dir}/{path}" in members for path in dep)
    # ext4 is loaded when the kernel asks for it: modprobe finds it by its alias, after its dependencies
    assert "alias fs-ext4 ext4" in members[f"{modules_dir}/modules.alias"].data.decode().splitlines()
    assert {kernel.module_name(path) for path in dep[shipped["ext4"]].split()} == {"jbd2", "mbcache", "crc16"}
    assert members["init"].mode == stat.S_IFREG | 0o755
    assert members["dev/console"].rdev == (5, 1)
    agent = builder.GUEST_AGENT_ROOT.lstrip("/")
    assert "runv/agent/__main__.py" in builder.AGENT_FILES and "runv/agent/loop.py" in builder.AGENT_FILES
    for source in builder.AGENT_FILES:  # every module `python3.11 -m runv.agent` imports, and its .pyc
        folder, _, module = source.rpartition("/")
        assert f"{agent}/{source}" in members, source
        assert f"{agent}/{folder}/__pycache__/{module.removesuffix('.py')}.cpython-311.pyc" in members, source
    lines: list[str] = []
    assert not builder.build_guest(kernel_path, initrd_path, progress=lines.append)
    assert lines[0].startswith("guest image up to date")


@needs_host_tools
def test_build_is_reproducible(built_image: tuple[Path, Path], tmp_path: Path) -> None:
    kernel_path, initrd_path = built_image
    assert builder.build_guest(tmp_path / "vmlinux", tmp_path / "initrd.img", force=True, progress=lambda line: None)
    assert (tmp_path / "initrd.img").read_bytes() == initrd_path.read_bytes()
    assert (tmp_path / "vmlinux").read_bytes() == kernel_path.read_bytes()


@needs_host_tools
def test_built_image_boots_to_halt(built_image: tuple[Path, Path]) -> None:
    kernel_path, initrd_path = built_image
    started = time.monotonic()
    result = subprocess.run(
        ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "256", "-smp", "1", "-nodefaults",
         "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel_path), "-initrd", str(initrd_path),
         "-append", "console=ttyS0 panic=-1 rdinit=/sbin/runv-halt"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "reboot: Power down" in result.stdout, result.stdout[-2000:]
    print(f"boot to halt: {time.monotonic() - started:.1f} s")

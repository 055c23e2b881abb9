"""The guest image builder: the cpio writer, module ordering, vmlinux extraction, and a real build and boot."""

from __future__ import annotations

import io
import lzma
import os
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from runv.api.errors import RunvError
from runv.guest import builder, kernel
from runv.guest.cpio import Archive


class Member(NamedTuple):
    """One entry read back from a newc archive."""

    name: str
    mode: int
    uid: int
    gid: int
    data: bytes
    rdev: tuple[int, int]


def read_newc(archive: bytes) -> list[Member]:
    """Parse a newc cpio archive up to its trailer, checking magic and 4-byte alignment."""
    members, position = [], 0
    while True:
        assert archive[position : position + 6] == b"070701"
        fields = [int(archive[position + 6 + 8 * i : position + 14 + 8 * i], 16) for i in range(13)]
        _ino, mode, uid, gid, _nlink, _mtime, size, _maj, _min, rmajor, rminor, namesize, _check = fields
        name = archive[position + 110 : position + 110 + namesize - 1].decode()
        position += 110 + namesize
        assert archive[position : position + (-position % 4)] == b"\0" * (-position % 4)
        position += -position % 4
        data = archive[position : position + size]
        position += size + (-size % 4)
        if name == "TRAILER!!!":
            assert position == len(archive)
            return members
        members.append(Member(name, mode, uid, gid, data, (rmajor, rminor)))


def test_cpio_round_trip() -> None:
    archive = Archive()
    archive.add_file("usr/lib/deep/file.txt", b"hello", 0o640)
    archive.add_symlink("/bin/sh", "/bin/busybox")
    archive.add_char_device("dev/console", 5, 1)
    archive.add_dir("tmp", 0o1777)
    archive.add_file("usr/lib/deep/file.txt", b"hello", 0o640)  # the same entry again is fine
    out = io.BytesIO()
    archive.write(out)
    members = {member.name: member for member in read_newc(out.getvalue())}

    assert list(members) == [
        "bin", "bin/sh", "dev", "dev/console", "tmp", "usr", "usr/lib", "usr/lib/deep", "usr/lib/deep/file.txt"
    ]  # fmt: skip
    assert members["usr/lib/deep/file.txt"].mode == stat.S_IFREG | 0o640
    assert members["usr/lib/deep/file.txt"].data == b"hello"
    assert members["usr/lib"].mode == stat.S_IFDIR | 0o755
    assert members["bin/sh"].mode == stat.S_IFLNK | 0o777
    assert members["bin/sh"].data == b"/bin/busybox"
    assert members["dev/console"].mode == stat.S_IFCHR | 0o600
    assert members["dev/console"].rdev == (5, 1)
    assert members["tmp"].mode == stat.S_IFDIR | 0o1777
    assert all(member.uid == member.gid == 0 for member in members.values())


def test_cpio_rejects_conflicting_entries() -> None:
    archive = Archive()
    archive.add_symlink("lib", "usr/lib")
    with pytest.raises(ValueError, match="not a directory"):
        archive.add_file("lib/x.so", b"")
    with pytest.raises(ValueError, match="added twice"):
        archive.add_file("lib", b"")


def test_add_host_path_keeps_symlinks(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libz.so.1.2").write_bytes(b"ELF")
    (tmp_path / "usr" / "lib" / "libz.so.1").symlink_to("libz.so.1.2")
    (tmp_path / "lib").symlink_to("usr/lib")
    archive = Archive()
    builder.add_host_path(archive, tmp_path / "lib" / "libz.so.1")
    root = str(tmp_path).strip("/")

    assert archive.entries[f"{root}/lib"].data == b"usr/lib"
    assert archive.entries[f"{root}/usr/lib/libz.so.1"].data == b"libz.so.1.2"
    assert archive.entries[f"{root}/usr/lib/libz.so.1.2"].data == b"ELF"
    assert stat.S_ISREG(archive.entries[f"{root}/usr/lib/libz.so.1.2"].mode)


MODULES = [
    "kernel/lib/crc16.ko",
    "kernel/fs/jbd2/jbd2.ko",
    "kernel/fs/mbcache.ko",
    "kernel/fs/ext4/ext4.ko",
    "kernel/drivers/md/dm-mod.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
]
DEPENDS = {
    "kernel/lib/crc16.ko": [],
    "kernel/fs/jbd2/jbd2.ko": [],
    "kernel/fs/mbcache.ko": [],
    "kernel/fs/ext4/ext4.ko": ["mbcache", "jbd2", "crc16"],
    "kernel/drivers/md/dm-mod.ko": [],
    "kernel/drivers/virtio/virtio.ko": [],
    "kernel/drivers/virtio/virtio_ring.ko": ["virtio"],
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko": [],
    "kernel/drivers/virtio/virtio_pci.ko": ["virtio_pci_modern_dev", "virtio_ring", "virtio"],
}


def test_module_load_order_puts_dependencies_first() -> None:
    builtin = ["kernel/lib/crc16.ko", "kernel/drivers/char/hw_random/virtio-rng.ko"]
    order = kernel.module_load_order(
        ["virtio_pci", "virtio", "ext4", "dm_mod", "virtio_rng"], MODULES, builtin, DEPENDS.__getitem__
    )
    assert order == [
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
        "kernel/drivers/md/dm-mod.ko",
    ]


def test_module_load_order_rejects_unknown_module() -> None:
    with pytest.raises(RunvError, match="no module nonesuch"):
        kernel.module_load_order(["nonesuch"], MODULES, [], DEPENDS.__getitem__)


def elf_with_sections(sections: dict[str, bytes]) -> bytes:
    """A little-endian ELF64 file holding the given sections, the section name table last."""
    sections = {**sections, ".shstrtab": b""}
    name_offsets, names = {}, b"\0"
    for name in sections:
        name_offsets[name] = len(names)
        names += name.encode() + b"\0"
    sections[".shstrtab"] = names
    body, headers = b"", bytes(64)  # section 0 is the null section
    for name, content in sections.items():
        headers += struct.pack("<IIQQQQIIQQ", name_offsets[name], 1, 0, 0, 64 + len(body), len(content), 0, 0, 1, 0)
        body += content
    shnum = len(sections) + 1
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, 64 + len(body), 0, 64, 0, 0, 64, shnum, shnum - 1)
    return header + body + headers


def test_modules_dep_lists_every_dependency_loaded_last_first() -> None:
    depends = {"a.ko": [], "b.ko": ["a"], "c.ko": ["b"], "d.ko": ["c", "a"]}
    order = kernel.module_load_order(["d"], depends, [], depends.__getitem__)
    assert order == ["a.ko", "b.ko", "c.ko", "d.ko"]
    # busybox's modprobe loads a line's dependencies from the last to the first
    assert kernel.modules_dep(order, depends.__getitem__) == "a.ko:\nb.ko: a.ko\nc.ko: b.ko a.ko\nd.ko: c.ko b.ko a.ko\n"


def test_modinfo_depends() -> None:
    modinfo = b"license=GPL\0depends=virtio_ring,virtio\0vermagic=6.1\0"
    module = elf_with_sections({".text": b"\x90" * 8, ".modinfo": modinfo})
    assert kernel.modinfo_depends(module) == ["virtio_ring", "virtio"]
    assert kernel.modinfo_depends(elf_with_sections({".modinfo": b"depends=\0license=GPL\0"})) == []


def test_extract_vmlinux_from_xz_payload() -> None:
    vmlinux = b"\x7fELF" + os.urandom(5000)
    decoy = kernel.XZ_MAGIC + b"not really xz"
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2}]  # as the kernel's own xz payload
    payload = lzma.compress(vmlinux, format=lzma.FORMAT_XZ, filters=filters)
    bzimage = b"MZ" + bytes(1000) + decoy + payload + struct.pack("<I", len(vmlinux))
    assert kernel.extract_vmlinux(bzimage) == vmlinux


def test_extract_vmlinux_rejects_non_elf() -> None:
    with pytest.raises(RunvError, match="no XZ-compressed ELF"):
        kernel.extract_vmlinux(b"MZ" + lzma.compress(b"not an elf", format=lzma.FORMAT_XZ))


def test_resolve_package_reads_the_exact_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = {
        "linux-image-amd64": "Version: 6.1.192-3\nDepends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\n",
        "linux-image-6.1.0-57-amd64": "Version: 6.1.192-3\nDepends: kmod, linux-base (>= 4.3~)\n",
    }
    monkeypatch.setattr(kernel, "run_tool", lambda argv, *args, **kwargs: shown[argv[-1]])
    assert kernel.resolve_package("linux-image-amd64") == ("linux-image-6.1.0-57-amd64", "6.1.192-3")
    assert kernel.resolve_package("linux-image-6.1.0-57-amd64") == ("linux-image-6.1.0-57-amd64", "6.1.192-3")


@pytest.mark.skipif(not Path(builder.BUSYBOX).exists(), reason="needs busybox")
def test_init_script_parses() -> None:
    init = Path(builder.__file__).with_name("init.sh")
    subprocess.run([str(builder.BUSYBOX), "sh", "-n", str(init)], check=True)


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


@pytest.mark.vm
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


@pytest.mark.vm
@needs_host_tools
def test_build_is_reproducible(built_image: tuple[Path, Path], tmp_path: Path) -> None:
    kernel_path, initrd_path = built_image
    assert builder.build_guest(tmp_path / "vmlinux", tmp_path / "initrd.img", force=True, progress=lambda line: None)
    assert (tmp_path / "initrd.img").read_bytes() == initrd_path.read_bytes()
    assert (tmp_path / "vmlinux").read_bytes() == kernel_path.read_bytes()


@pytest.mark.vm
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

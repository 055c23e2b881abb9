"""The guest image builder's parts: the cpio writer, module ordering, vmlinux extraction, the
init script, the kernel package it picks (a real build and boot: tests/vm/test_guest_image.py)."""

from __future__ import annotations

import io
import lzma
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from runv.api.errors import RunvError
from runv.guest import builder, kernel, userland
from runv.guest.cpio import Archive
from runv.testing.host import read_newc


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


def test_the_userland_image_is_the_initrds_usr_as_erofs_in_whole_2_mib_pages(tmp_path) -> None:
    """Only /usr goes in (busybox and /init stay in the initrd), owned by root, readable back
    with the content and modes the archive had; the size suits a memory device."""
    archive = Archive()
    archive.add_file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    archive.add_symlink("usr/bin/sh", "/bin/busybox")
    archive.add_file("usr/lib/data", b"x" * 5000)
    archive.add_file("bin/busybox", b"not in the image")
    data = userland.image(archive)
    assert len(data) % (2 << 20) == 0
    assert struct.unpack_from("<I", data, 1024)[0] == 0xE0F5E1E2  # EROFS's superblock magic
    image = tmp_path / "userland"
    image.write_bytes(data)
    listing = subprocess.run(["dump.erofs", "--ls", "--path=/bin", str(image)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr  # erofs-utils: scripts/install
    assert "tool" in listing.stdout and "sh" in listing.stdout
    root = subprocess.run(["dump.erofs", "--ls", "--path=/", str(image)], capture_output=True, text=True).stdout
    assert "busybox" not in root and "bin" in root and "lib" in root


def test_the_lean_initrd_keeps_what_init_needs_before_the_image_is_mounted() -> None:
    """Everything outside /usr, and of /usr only the modules /init loads at boot and EROFS's
    (with their dependencies and modprobe's tables): the rest is the image's."""
    archive = Archive()
    modules = "usr/lib/modules/6.1.0-test"
    archive.add_file("init", b"#!/bin/sh\n", 0o755)
    archive.add_file("bin/busybox", b"elf", 0o755)
    archive.add_file("etc/runv/modules", b"virtio_pmem\n")
    archive.add_file(f"{modules}/modules.dep", b"kernel/virtio_pmem.ko: kernel/libnvdimm.ko\nkernel/libnvdimm.ko:\n"
                     b"kernel/erofs.ko: kernel/lz4.ko\nkernel/lz4.ko:\nkernel/ext4.ko:\n")
    for name in ("virtio_pmem", "libnvdimm", "erofs", "lz4", "ext4"):
        archive.add_file(f"{modules}/kernel/{name}.ko", name.encode())
    archive.add_file("usr/bin/python3.11", b"elf", 0o755)
    lean = userland.lean(archive)
    assert sorted(n for n in lean.entries if n.endswith(".ko")) == [
        f"{modules}/kernel/{name}.ko" for name in ("erofs", "libnvdimm", "lz4", "virtio_pmem")]
    assert {"init", "bin/busybox", "etc/runv/modules", f"{modules}/modules.dep", "usr/lib/modules"} <= set(lean.entries)
    assert "usr/bin/python3.11" not in lean.entries

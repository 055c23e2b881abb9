"""Density: the memory a container's guest frees goes back to the host (free-page reporting),
never by punching the template a shared clone maps, and the guest still has all its memory."""

import hashlib
import json
import time
from pathlib import Path

import pytest

from runv.settings import Settings
from runv.testing import vm_processes_in
from runv.testing.host import guest_memory

pytestmark = pytest.mark.usefixtures("guest_image")

MIB = 1 << 20
SHM = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["size=200m"]}
FILL = ["dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=100"]


def meminfo(runv, cid: str) -> dict[str, int]:
    out = runv("exec", cid, "cat", "/proc/meminfo", check=True).stdout
    return {line.split(":")[0]: int(line.split()[1]) for line in out.splitlines()}


def test_memory_a_container_frees_goes_back_to_the_host(runv, root, make_bundle, template_dir):
    """A private clone (the default) fills 100 MiB of tmpfs: its memfd grows by as much; once
    the file is removed, the guest reports the free memory and the host takes it back. The
    guest sees all its memory: MemTotal as a cold-booted VM of the same size has it."""
    bundle = make_bundle(["sleep", "1000"], mounts=[SHM])
    assert runv("--template", "test", "run", "-d", "--bundle", bundle, "d1").returncode == 0
    assert json.loads((root / "d1/template.json").read_text()) == {"template": "test"}
    [qemu] = vm_processes_in(root)
    time.sleep(3)  # what the clone freed as it woke up is reported
    idle = guest_memory([qemu])
    assert runv("exec", "d1", *FILL).returncode == 0
    full = guest_memory([qemu])
    assert runv("exec", "d1", "rm", "/dev/shm/fill").returncode == 0
    deadline = time.monotonic() + 30  # Linux reports within 2 s of a free, a share of the free memory each time
    while (after := guest_memory([qemu])) > idle + 10 * MIB and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"guest memory held by the host, MiB: idle {idle / MIB:.0f}, filled {full / MIB:.0f}, freed {after / MIB:.0f}")
    assert full - idle >= 95 * MIB
    assert after <= idle + 10 * MIB
    total = meminfo(runv, "d1")["MemTotal"]
    assert runv("--template", "off", "run", "-d", "--bundle", bundle, "cold").returncode == 0
    assert meminfo(runv, "cold")["MemTotal"] == total


def test_a_shared_clone_frees_memory_without_touching_its_template(runv, root, make_bundle, template_dir):
    """QEMU 7.2 would punch a reported page out of the template's file that a shared clone maps
    private, under every other clone of it: a shared template's VMs report nothing, and the
    file is the same, byte for byte, after a clone filled and freed 100 MiB."""
    assert runv("template", "create", "--clones", "shared", "dense-d", timeout=300).returncode == 0
    memory = template_dir / "dense-d" / "memory"
    try:
        before = memory.stat().st_blocks, hashlib.sha256(memory.read_bytes()).hexdigest()
        bundle = make_bundle(["sleep", "1000"], mounts=[SHM])
        assert runv("--template", "dense-d", "run", "-d", "--bundle", bundle, "d2").returncode == 0
        assert json.loads((root / "d2/template.json").read_text()) == {"template": "dense-d"}
        assert runv("exec", "d2", *FILL).returncode == 0
        assert runv("exec", "d2", "rm", "/dev/shm/fill").returncode == 0
        time.sleep(6)  # three times the guest's reporting delay
        assert runv("delete", "--force", "d2").returncode == 0
        assert (memory.stat().st_blocks, hashlib.sha256(memory.read_bytes()).hexdigest()) == before
    finally:
        runv("template", "rm", "dense-d")


def test_the_guests_userland_is_one_read_only_image_every_vm_maps(runv, make_bundle):
    """The guest's /usr is the host's image on virtio-pmem, mapped with DAX: the initrd's copy
    is gone from the guest's RAM (its shared memory, tmpfs and initramfs, under 4 MiB where it
    held 19), and a container that sees the VM's devices and writes over the image changes
    nothing on the host, nor what the guest reads back (QEMU maps it read-only: the writes are
    dropped)."""
    image = Path((Settings().userland() or ("",))[0])
    assert image.is_file(), "runv guest build makes the userland image beside the initrd"
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    region = image.read_bytes()[400 << 12:416 << 12]  # 16 pages well inside the image
    bundle = make_bundle(["sleep", "1000"], annotations={"io.runv.guest-devices": "true"})
    assert runv("run", "-d", "--bundle", bundle, "u1").returncode == 0
    assert meminfo(runv, "u1")["Shmem"] < 4 << 10
    # straight to the device (O_DIRECT: the block layer's cache of the guest's own would answer
    # from memory), then read back the same way; an fsync would wait for QEMU to flush a file it
    # has read-only, forever: the guest can only hang its own VM
    wrote = runv("exec", "u1", "sh", "-c", "dd if=/dev/urandom of=/dev/pmem0 bs=4096 seek=400 count=16 oflag=direct"
                 " conv=notrunc && dd if=/dev/pmem0 bs=4096 skip=400 count=16 iflag=direct | md5sum")
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.split()[0] == hashlib.md5(region).hexdigest()  # the guest reads the image as it was
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    assert runv("exec", "u1", "/bin/busybox", "true").returncode == 0  # and its userland still runs

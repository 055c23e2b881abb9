"""Storage: the bundle plugin's share/overlay/block modes, the ext4 base-image cache, and
volumes (the spec's mounts). VM tests boot real TCG guests, at most two at a time."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

import runv_bundle
from runv.api import NINEP_VIRTIO, VIRTIOFS, Capabilities, GuestMount, images
from runv.api import storage as storage_config
from runv.api.errors import RunvError
from runv.api.frozen import to_json as vm_json
from runv.testing import vm_processes_in, vm_spec
from runv.testing.host import RUNV
from runv.vm import bringup, volumes


def tree_hash(root: Path) -> str:
    return images.tree_digest(root)[0]


@pytest.fixture
def storage_env(tmp_path, monkeypatch):
    """A private runv config whose [storage] cache and containers directories live under
    the test's tmp dir (the cache is returned; the containers directory is ``own_dirs``)."""
    cache = tmp_path / "cache"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\ncache_dir = "{cache}"\ncontainers_dir = "{tmp_path / "containers"}"\n')
    monkeypatch.setenv("RUNV_CONFIG", str(cfg))
    return cache


def own_dirs(tmp_path) -> list[Path]:
    """The containers' own directories (upper layers, qcow2 overlays) that exist now."""
    top = tmp_path / "containers"
    return sorted(top.iterdir()) if top.is_dir() else []


# ---------------------------------------------------------------- no VM


def test_volume_plan_shares_dirs_and_files_alone(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    staging = tmp_path / "state/volumes"
    shares, mounts, host_binds = volumes.plan([
        {"destination": "/data", "type": "bind", "source": str(tmp_path / "d"), "options": ["rbind", "ro", "rprivate"]},
        {"destination": "/etc/f", "type": "none", "source": str(tmp_path / "f"), "options": ["bind", "nosuid"]},
        {"destination": "/proc/kcore", "type": "bind", "source": "/dev/null", "options": ["bind", "ro"]},
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "size=65536k", "tmpcopyup"]},
    ], staging)
    # each is shared from its staging place (bound there by descriptor); a file from a directory of its own
    assert [(s.tag, s.path, s.readonly) for s in shares] == [("vol0", staging / "vol0", True), ("vol1", staging / "vol1", False)]
    assert host_binds == ((tmp_path / "d", staging / "vol0"), (tmp_path / "f", staging / "vol1/f"))
    by_target = {m.target: m for m in mounts}
    assert by_target["/data"] == GuestMount.of_share("vol0", options="", readonly=True, target="/data", in_rootfs=True)
    # the core serves the share as the hypervisor's capabilities say (9p for QEMU, virtio-fs, ...)
    vm = vm_spec(tmp_path / "state", shares=shares)
    assert bringup.guest_mount(by_target["/data"], vm, Capabilities(shared_fs=NINEP_VIRTIO)) == {
        **vm_json(by_target["/data"]), "source": "vol0", "fstype": "9p", "options": NINEP_VIRTIO.options}
    assert bringup.guest_mount(by_target["/data"], vm, Capabilities(shared_fs=VIRTIOFS))["fstype"] == "virtiofs"
    assert by_target["/run/runv/volumes/vol1"].in_rootfs is False
    assert by_target["/etc/f"].fstype == "bind" and by_target["/etc/f"].source == "/run/runv/volumes/vol1/f"
    assert by_target["/etc/f"].options == "nosuid"
    # the host's /dev is never shared: masked paths get the guest's own /dev/null
    assert by_target["/proc/kcore"].source == "/dev/null" and by_target["/proc/kcore"].fstype == "bind"
    assert all("/dev" != str(s.path) for s in shares)
    assert "/proc" not in by_target and "/dev" not in by_target  # the agent mounts those itself
    assert by_target["/dev/shm"].options == "nosuid,size=65536k"


def test_volume_files_are_staged_and_released(tmp_path):
    (tmp_path / "f").write_text("host\n")
    state = tmp_path / "state"
    _, _, host_binds = volumes.plan([{"destination": "/f", "type": "bind", "source": str(tmp_path / "f")}], state / "volumes")
    volumes.stage(host_binds)
    try:
        assert (state / "volumes/vol0/f").read_text() == "host\n"
        assert os.listdir(state / "volumes/vol0") == ["f"]
    finally:
        volumes.release(state)
    assert (state / "volumes/vol0/f").read_text() == ""  # unmounted: the empty mount point is left
    assert str(state) not in open("/proc/self/mountinfo").read()


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"destination": "/x", "type": "nfs", "source": "srv:/x"}, "mount type 'nfs' at /x is not supported"),
        ({"destination": "/x", "type": "bind", "source": "/does/not/exist", "options": ["bind"]}, "does not exist"),
        ({"destination": "x", "type": "tmpfs"}, "destination must be an absolute path"),
        ({"destination": "/x", "type": "bind", "source": "rel", "options": ["bind"]}, "absolute host path"),
        ({"destination": "/x", "type": "bind", "source": "/dev/kvm", "options": ["bind"]}, "a VM has only its own devices"),
    ],
)
def test_volume_plan_refuses_what_it_cannot_honour(entry, words, tmp_path):
    with pytest.raises(RunvError, match=words) as info:
        volumes.plan([entry], tmp_path)
    assert "\n" not in str(info.value) and "mounts[0]" in str(info.value)


def test_storage_settings_from_annotations(storage_env):
    assert storage_config.settings({})["mode"] is None and runv_bundle.options_for({})["mode"] == "share"
    assert storage_config.settings({"io.runv.storage.overlay": "true"})["mode"] == "overlay"
    got = runv_bundle.options_for({"io.runv.storage.mode": "block", "io.runv.storage.base-size": "512M"})
    assert got["mode"] == "block" and got["base_size"] == 512 << 20 and got["cache_dir"] == storage_env
    with pytest.raises(RunvError, match="^annotation io.runv.storage.mode: storage mode 'zfs' is not one of share, overlay, block$"):
        runv_bundle.options_for({"io.runv.storage.mode": "zfs"})
    with pytest.raises(RunvError, match="invalid size"):
        storage_config.settings({"io.runv.storage.upper-size": "lots"})


def test_base_image_is_cached_by_content_and_read_only(tmp_path, base_rootfs):
    cache = tmp_path / "cache"
    first = images.base_image(base_rootfs, cache, 64 << 20)
    assert first.stat().st_mode & 0o777 == 0o444
    assert images.base_image(base_rootfs, cache, 64 << 20) == first  # cached
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(base_rootfs), str(copy)], check=True)
    assert images.base_image(copy, cache, 64 << 20) == first  # same content, same image
    (copy / "etc/new").write_text("changed")
    assert images.base_image(copy, cache, 64 << 20) != first


def test_concurrent_base_builds_make_one_image(tmp_path, base_rootfs):
    cache = tmp_path / "cache"
    results, errors = [], []

    def build():
        try:
            results.append(images.base_image(base_rootfs, cache, 64 << 20))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".lock")) == [results[0].name]


def test_base_build_failing_half_way_leaves_nothing(tmp_path, base_rootfs):
    cache = tmp_path / "cache"
    big = tmp_path / "big"
    subprocess.run(["cp", "-a", str(base_rootfs), str(big)], check=True)
    (big / "blob").write_bytes(os.urandom(8 << 20))
    stale = cache / ".base-crashed.ext4.1.tmp"  # what a build killed earlier left
    cache.mkdir()
    stale.write_bytes(b"x")
    real_size = images.image_size
    images.image_size = lambda content, minimum: 4 << 20  # too small: mkfs.ext4 -d runs out of blocks
    try:
        with pytest.raises(RunvError, match="cannot build the base image .*mkfs.ext4 failed") as info:
            images.base_image(big, cache, 1)
    finally:
        images.image_size = real_size
    assert "\n" not in str(info.value)
    assert [p.name for p in cache.iterdir()] == [".lock"]  # no image, no temporary, stale one gone
    assert images.base_image(big, cache, 1).is_file()  # the next build succeeds


# ---------------------------------------------------------------- VMs

def bundle_with(make_bundle, args, name="bundle", annotations=None, mounts=None, **extra):
    if annotations:
        extra["annotations"] = annotations
    if mounts:
        extra["mounts"] = mounts
    return make_bundle(args, name=name, **extra)


def run_parallel(root, jobs):
    """Runs several ``runv run`` at once (at most two VMs); returns their CompletedProcess."""
    procs = []
    for bundle, cid in jobs:
        procs.append(subprocess.Popen([RUNV, "--root", str(root), "run", "--bundle", str(bundle), cid],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        results.append((p.returncode, out, err))
    return results


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_overlay_two_containers_one_base_see_only_their_own_writes(runv, make_bundle, root, storage_env, tmp_path):
    script = ("echo $ID > /same; echo $ID >> /etc/passwd; sleep 2; cat /same; tail -1 /etc/passwd; "
              "mount | grep ' / '")
    bundle = bundle_with(make_bundle, ["sh", "-c", script], annotations={"io.runv.storage.overlay": "true"})
    config = json.loads((bundle / "config.json").read_text())
    second = bundle.parent / "bundle2"  # a second config over the SAME rootfs directory
    second.mkdir()
    for cid, where in (("a", bundle), ("b", second)):
        config["process"]["env"] = ["PATH=/bin", f"ID={cid}"]
        config["root"]["path"] = str(bundle / "rootfs")
        (where / "config.json").write_text(json.dumps(config))
    before = tree_hash(bundle / "rootfs")
    results = run_parallel(root, [(bundle, "a"), (second, "b")])
    for (code, out, err), cid in zip(results, "ab"):
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == cid and lines[1] == cid  # its own new file, its own change to a base file
        assert "overlay on / type overlay" in lines[-1]
    assert tree_hash(bundle / "rootfs") == before  # the base is unchanged
    assert not (bundle / "rootfs/same").exists()
    assert not root.exists() or not os.listdir(root)  # run deleted them ...
    assert own_dirs(tmp_path) == []  # ... and their upper layers


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_overlay_upper_lives_on_disk_in_its_own_directory_until_delete(runv, make_bundle, root, storage_env, tmp_path):
    script = "echo data > /f; head -c 16777216 /dev/urandom > /big; sync; sleep 1000"
    bundle = bundle_with(make_bundle, ["sh", "-c", script],
                         annotations={"io.runv.storage.mode": "overlay", "io.runv.storage.upper-size": "256M"})
    runv("create", "--bundle", bundle, "u1", check=True)
    (directory,) = own_dirs(tmp_path)
    upper = directory / "upper.img"
    assert directory.name.startswith("u1-") and stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert upper.stat().st_size == 256 << 20 and upper.stat().st_blocks * 512 < 16 << 20  # sparse, the size asked
    assert [p.name for p in (root / "u1").rglob("*.img")] == []  # nothing big in --root (RAM)
    runv("start", "u1", check=True)
    deadline = time.monotonic() + 120
    while upper.stat().st_blocks * 512 < 16 << 20:  # the guest's 16 MiB land in the file on disk
        assert time.monotonic() < deadline, "the container's writes never reached upper.img"
        time.sleep(0.5)
    time.sleep(2)  # its sync
    # read back on a copy, its journal replayed by e2fsck: the container's file is in the upper layer
    copy = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(upper), str(copy)], check=True)
    assert subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True).returncode in (0, 1)
    written = subprocess.run(["debugfs", "-R", "cat /upper/f", str(copy)], capture_output=True, text=True, check=True)
    assert written.stdout == "data\n", written.stderr
    runv("delete", "--force", "u1", check=True)
    assert not (root / "u1").exists() and own_dirs(tmp_path) == []
    assert not (bundle / "rootfs/f").exists() and not (bundle / "rootfs/big").exists()


@pytest.mark.usefixtures("guest_image")
def test_an_upper_size_above_the_maximum_fails_create_and_leaves_nothing(runv, make_bundle, root, storage_env, tmp_path):
    bundle = bundle_with(make_bundle, ["true"], annotations={"io.runv.storage.overlay": "true",
                                                             "io.runv.storage.upper-size": "100T"})
    result = runv("create", "--bundle", bundle, "big")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "annotation io.runv.storage.upper-size: size 100T is above the maximum 64G" in result.stderr
    assert not (root / "big").exists() and own_dirs(tmp_path) == [] and not vm_processes_in(root)


OVERLAY_OPS = r"""
set -e
cd /
echo new > /etc/newfile; cat /etc/newfile
echo changed > /etc/passwd; cat /etc/passwd
mv /bin/true /bin/true2; test ! -e /bin/true; test -L /bin/true2 && echo renamed
rm /bin/false; test ! -e /bin/false && echo removed
rm -r /root; test ! -e /root && echo dir-removed
mkdir /root; ls -A /root | wc -l
mkdir -p /tmp/a/b; echo x > /tmp/a/b/c; mv /tmp/a /tmp/z; cat /tmp/z/b/c
ln -s /etc/newfile /link; cat /link
rm /etc/newfile; test ! -e /etc/newfile && echo whiteout
echo done
"""


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_overlay_read_write_rename_delete_whiteouts(runv, make_bundle, storage_env):
    bundle = bundle_with(make_bundle, ["sh", "-c", OVERLAY_OPS], annotations={"io.runv.storage.overlay": "true"})
    (bundle / "rootfs/root/.profile").write_text("keep")
    before = tree_hash(bundle / "rootfs")
    result = runv("run", "--bundle", bundle, "ops")
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.split() == ["new", "changed", "renamed", "removed", "dir-removed", "0", "x", "new",
                                     "whiteout", "done"]
    assert tree_hash(bundle / "rootfs") == before
    assert (bundle / "rootfs/root/.profile").read_text() == "keep"


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_block_mode_qcow2_over_cached_base(runv, make_bundle, root, storage_env, tmp_path):
    script = "cat /sys/block/vda/serial; echo; echo hi > /new; rm /bin/ls; mount | grep ' / '; test -e /new && echo ok"
    bundle = bundle_with(make_bundle, ["sh", "-c", script], annotations={"io.runv.storage.mode": "block"})
    before = tree_hash(bundle / "rootfs")
    result = runv("run", "--bundle", bundle, "blk1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["rootfs", "/dev/vda on / type ext4 (rw,relatime)", "ok"]
    (base,) = storage_env.glob("base-*.ext4")
    base_sum = hashlib.sha256(base.read_bytes()).hexdigest()
    # the second container sees the base as built: /bin/ls is there, /new is not
    bundle2 = bundle_with(make_bundle, ["sh", "-c", "test -e /bin/ls && test ! -e /new && echo pristine"], name="b2",
                          annotations={"io.runv.storage.mode": "block"})
    result = runv("run", "--bundle", bundle2, "blk2")
    assert result.returncode == 0 and result.stdout == "pristine\n", result.stderr
    assert list(storage_env.glob("base-*.ext4")) == [base]  # same content: one cached base
    assert hashlib.sha256(base.read_bytes()).hexdigest() == base_sum
    assert tree_hash(bundle / "rootfs") == before
    assert not root.exists() or not os.listdir(root)
    assert own_dirs(tmp_path) == []  # the qcow2 overlays went with the containers


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_block_mode_delete_force_after_crash_converges(runv, make_bundle, root, storage_env, tmp_path):
    bundle = bundle_with(make_bundle, ["sleep", "1000"], annotations={"io.runv.storage.mode": "block"})
    pid_file = tmp_path / "pid"
    runv("run", "-d", "--bundle", bundle, "--pid-file", pid_file, "crash", check=True)
    (directory,) = own_dirs(tmp_path)
    qcow2 = directory / "rootfs.qcow2"
    assert qcow2.is_file()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the shim dies; its VM and qcow2 stay behind
    time.sleep(0.5)
    runv("delete", "--force", "crash", check=True)
    assert own_dirs(tmp_path) == [] and not (root / "crash").exists()
    assert not vm_processes_in(root)
    (base,) = storage_env.glob("base-*.ext4")
    assert base.stat().st_mode & 0o777 == 0o444
    assert runv("delete", "--force", "crash").returncode == 0  # gone: as runc, --force of nothing succeeds


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_volumes_ro_rw_file_and_dir(runv, make_bundle, tmp_path):
    rw_dir, ro_dir = tmp_path / "rw", tmp_path / "ro"
    rw_dir.mkdir()
    ro_dir.mkdir()
    (ro_dir / "in").write_text("ro-dir\n")
    rw_file, ro_file = tmp_path / "rw.txt", tmp_path / "ro.txt"
    rw_file.write_text("old\n")
    ro_file.write_text("ro-file\n")
    script = (
        "echo host-sees-me > /data/out; cat /ro/in; echo x > /ro/in 2>/dev/null || echo ro-dir-refused; "
        "cat /etc/ro.txt; echo x > /etc/ro.txt 2>/dev/null || echo ro-file-refused; "
        "cat /etc/rw.txt; echo new > /etc/rw.txt; "
        "echo t > /scratch/t && grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs-ok; "
        "grep -q ' /dev/mqueue mqueue' /proc/mounts && echo mqueue-ok"
    )
    mounts = [
        {"destination": "/data", "type": "bind", "source": str(rw_dir), "options": ["rbind", "rw"]},
        {"destination": "/ro", "type": "bind", "source": str(ro_dir), "options": ["rbind", "ro"]},
        {"destination": "/etc/ro.txt", "type": "bind", "source": str(ro_file), "options": ["bind", "ro"]},
        {"destination": "/etc/rw.txt", "type": "bind", "source": str(rw_file), "options": ["bind"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec"]},
        {"destination": "/proc", "type": "proc", "source": "proc"},
    ]
    bundle = bundle_with(make_bundle, ["sh", "-c", script], mounts=mounts, annotations={"io.runv.storage.overlay": "true"})
    result = runv("run", "--bundle", bundle, "vols")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ro-dir", "ro-dir-refused", "ro-file", "ro-file-refused", "old", "tmpfs-ok",
                                     "mqueue-ok"]
    assert (rw_dir / "out").read_text() == "host-sees-me\n"
    assert rw_file.read_text() == "new\n"
    assert (ro_dir / "in").read_text() == "ro-dir\n" and ro_file.read_text() == "ro-file\n"
    assert not (bundle / "rootfs/data").exists()  # the mount points went into the upper layer


@pytest.mark.usefixtures("guest_image")
def test_unsupported_mount_type_refused_at_create(runv, make_bundle, root):
    mounts = [{"destination": "/x", "type": "nfs", "source": "server:/export", "options": []}]
    bundle = bundle_with(make_bundle, ["true"], mounts=mounts)
    result = runv("create", "--bundle", bundle, "nfs")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "mounts[0]: mount type 'nfs' at /x is not supported" in result.stderr
    assert not (root / "nfs").exists()
    assert not vm_processes_in(root)

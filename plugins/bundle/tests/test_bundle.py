"""The bundle storage plugin: its modes (share, overlay, block), the settings that choose them,
and the container's own directory its overlay and block modes keep their files in, called as
the core calls its hooks; real TCG guests (the tests marked vm) writing to their upper layer
and qcow2 overlay, at most two at a time."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

import runv_bundle
from runv.api import RunvError, images
from runv.api.storage import container_key, settings
from runv.testing import container, hooks_with, vm_processes_in
from runv.testing.host import RUNV, fake_program


def tree_hash(root: Path) -> str:
    return images.tree_digest(root)[0]


# ---------------------------------------------------------------- settings and hooks


def test_storage_settings_from_annotations(storage_config):
    assert settings({})["mode"] is None and runv_bundle.options_for({})["mode"] == "share"
    assert settings({"io.runv.storage.overlay": "true"})["mode"] == "overlay"
    got = runv_bundle.options_for({"io.runv.storage.mode": "block", "io.runv.storage.base-size": "512M"})
    assert got["mode"] == "block" and got["base_size"] == 512 << 20 and got["cache_dir"] == storage_config.cache
    with pytest.raises(RunvError, match="^annotation io.runv.storage.mode: storage mode 'zfs' is not one of share, overlay, block$"):
        runv_bundle.options_for({"io.runv.storage.mode": "zfs"})
    with pytest.raises(RunvError, match="invalid size"):
        settings({"io.runv.storage.upper-size": "lots"})


def test_overlay_upper_lives_in_its_own_0700_directory_until_detach(tmp_path, storage_config):
    box = container(tmp_path, annotations={"io.runv.storage.mode": "overlay", "io.runv.storage.upper-size": "64M"})
    box.state_dir.mkdir()
    hooks = hooks_with(runv_bundle)
    attachment = hooks.attach_storage(container=box)
    (disk,) = attachment.disks
    directory = disk.path.parent
    assert directory.parent == storage_config.containers and disk.path.name == "upper.img"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert os.stat(disk.path).st_size == 64 << 20 and os.stat(disk.path).st_blocks * 512 < 16 << 20  # sparse
    assert not any(box.state_dir.iterdir())  # nothing big in --root
    hooks.detach_storage(container=box, attachment=attachment)
    assert storage_config.own_dirs() == []
    hooks.detach_storage(container=box, attachment=attachment)  # converges


@pytest.mark.vm  # block mode's overlays are made with qemu-img
def test_block_qcow2_in_its_own_directory_base_in_the_cache(tmp_path, storage_config):
    box = container(tmp_path, annotations={"io.runv.storage.mode": "block"})
    (box.rootfs / "etc").mkdir()
    box.state_dir.mkdir()
    hooks = hooks_with(runv_bundle)
    attachment = hooks.attach_storage(container=box)
    (disk,) = attachment.disks
    assert disk.path.parent.parent == storage_config.containers and disk.path.name == "rootfs.qcow2"
    (base,) = storage_config.cache.glob("base-*.ext4")
    hooks.detach_storage(container=box, attachment=attachment)
    assert storage_config.own_dirs() == [] and base.is_file()  # the shared base stays


def test_two_roots_with_the_same_id_never_share_a_directory(tmp_path, storage_config):
    one = container(tmp_path / "one", cid="same", annotations={"io.runv.storage.overlay": "true"})
    two = container(tmp_path / "two", cid="same", annotations={"io.runv.storage.overlay": "true"})
    hooks = hooks_with(runv_bundle)
    for box in (one, two):
        box.state_dir.mkdir()
    first, second = (hooks.attach_storage(container=box) for box in (one, two))
    assert first.data["dir"] != second.data["dir"] and len(storage_config.own_dirs()) == 2
    assert all(path.name.startswith("same-") for path in storage_config.own_dirs())
    hooks.detach_storage(container=one, attachment=first)
    assert second.disks[0].path.is_file()  # the other root's container keeps its upper layer
    hooks.detach_storage(container=two, attachment=second)
    assert storage_config.own_dirs() == []


def test_a_failing_format_leaves_no_directory(tmp_path, storage_config, monkeypatch):
    box = container(tmp_path, annotations={"io.runv.storage.overlay": "true"})
    box.state_dir.mkdir()
    tools = tmp_path / "bin"
    fake_program(tools / images.MKFS, "echo 'mkfs.ext4: No space left on device' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    with pytest.raises(RunvError, match="cannot format .*upper.img.*No space left on device"):
        hooks_with(runv_bundle).attach_storage(container=box)
    assert storage_config.own_dirs() == []


def test_what_a_crashed_create_left_is_replaced(tmp_path, storage_config):
    box = container(tmp_path, annotations={"io.runv.storage.overlay": "true", "io.runv.storage.upper-size": "32M"})
    box.state_dir.mkdir()
    stale = storage_config.containers / container_key(box)
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x")
    hooks = hooks_with(runv_bundle)
    attachment = hooks.attach_storage(container=box)
    assert sorted(os.listdir(stale)) == [".owner", "upper.img"]
    hooks.detach_storage(container=box, attachment=attachment)
    assert storage_config.own_dirs() == []


# ---------------------------------------------------------------- VMs


def bundle_with(make_bundle, args, name="bundle", annotations=None):
    return make_bundle(args, name=name, **({"annotations": annotations} if annotations else {}))


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
def test_overlay_two_containers_one_base_see_only_their_own_writes(runv, make_bundle, root, storage_config):
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
    assert storage_config.own_dirs() == []  # ... and their upper layers


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_overlay_upper_lives_on_disk_in_its_own_directory_until_delete(runv, make_bundle, root, storage_config, tmp_path):
    script = "echo data > /f; head -c 16777216 /dev/urandom > /big; sync; sleep 1000"
    bundle = bundle_with(make_bundle, ["sh", "-c", script],
                         annotations={"io.runv.storage.mode": "overlay", "io.runv.storage.upper-size": "256M"})
    runv("create", "--bundle", bundle, "u1", check=True)
    (directory,) = storage_config.own_dirs()
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
    assert not (root / "u1").exists() and storage_config.own_dirs() == []
    assert not (bundle / "rootfs/f").exists() and not (bundle / "rootfs/big").exists()


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
def test_overlay_read_write_rename_delete_whiteouts(runv, make_bundle, storage_config):
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
def test_block_mode_qcow2_over_cached_base(runv, make_bundle, root, storage_config):
    script = "cat /sys/block/vda/serial; echo; echo hi > /new; rm /bin/ls; mount | grep ' / '; test -e /new && echo ok"
    bundle = bundle_with(make_bundle, ["sh", "-c", script], annotations={"io.runv.storage.mode": "block"})
    before = tree_hash(bundle / "rootfs")
    result = runv("run", "--bundle", bundle, "blk1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["rootfs", "/dev/vda on / type ext4 (rw,relatime)", "ok"]
    (base,) = storage_config.cache.glob("base-*.ext4")
    base_sum = hashlib.sha256(base.read_bytes()).hexdigest()
    # the second container sees the base as built: /bin/ls is there, /new is not
    bundle2 = bundle_with(make_bundle, ["sh", "-c", "test -e /bin/ls && test ! -e /new && echo pristine"], name="b2",
                          annotations={"io.runv.storage.mode": "block"})
    result = runv("run", "--bundle", bundle2, "blk2")
    assert result.returncode == 0 and result.stdout == "pristine\n", result.stderr
    assert list(storage_config.cache.glob("base-*.ext4")) == [base]  # same content: one cached base
    assert hashlib.sha256(base.read_bytes()).hexdigest() == base_sum
    assert tree_hash(bundle / "rootfs") == before
    assert not root.exists() or not os.listdir(root)
    assert storage_config.own_dirs() == []  # the qcow2 overlays went with the containers


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_block_mode_delete_force_after_crash_converges(runv, make_bundle, root, storage_config, tmp_path):
    bundle = bundle_with(make_bundle, ["sleep", "1000"], annotations={"io.runv.storage.mode": "block"})
    pid_file = tmp_path / "pid"
    runv("run", "-d", "--bundle", bundle, "--pid-file", pid_file, "crash", check=True)
    (directory,) = storage_config.own_dirs()
    qcow2 = directory / "rootfs.qcow2"
    assert qcow2.is_file()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the shim dies; its VM and qcow2 stay behind
    time.sleep(0.5)
    runv("delete", "--force", "crash", check=True)
    assert storage_config.own_dirs() == [] and not (root / "crash").exists()
    assert not vm_processes_in(root)
    (base,) = storage_config.cache.glob("base-*.ext4")
    assert base.stat().st_mode & 0o777 == 0o444
    assert runv("delete", "--force", "crash").returncode == 0  # gone: as runc, --force of nothing succeeds



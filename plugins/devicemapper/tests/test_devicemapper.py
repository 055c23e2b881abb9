"""The devicemapper storage plugin: its refusals where the kernel has no device-mapper (the
kernel's answer faked, so they run on any host), and its pools on a real kernel device-mapper.

This host's kernel may have none, but runv's guest kernel has dm-thin-pool and loop. So the
plugin's host-side code (runv_devicemapper.thin: pools on loop-backed sparse files, base
volumes, snapshots, locks, cleanup) runs *inside a helper VM* booted with runv's own guest
image: a container (block storage mode) whose rootfs carries python3.11 with its stdlib,
util-linux losetup and Debian's dmsetup with their libraries, and the module under test.
The scenario prints what it observed as JSON; the assertions are here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import runv.api
import runv_devicemapper
from runv.api import RunvError, images
from runv.testing import container
from runv.testing.host import RUNV, add_host_binary, make_rootfs

CORE = Path(runv.api.__file__).parents[2]  # the directory holding the runv package
PLUGIN = Path(runv_devicemapper.__file__).parent
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "dist-packages",
               "config-3.11-x86_64-linux-gnu", "pydoc_data", "distutils", "unittest", "asyncio", "email", "xml"}

SCENARIO = r'''
import hashlib, json, os, subprocess, sys, threading
sys.path.insert(0, "/opt/runv")
from pathlib import Path
from runv.api.errors import RunvError
from runv_devicemapper import thin

out = {}
def sh(*a):
    return subprocess.run(list(a), capture_output=True, text=True)
def digest(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            b = f.read(min(1 << 20, left))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()
def mount(dev, mnt):
    os.makedirs(mnt, exist_ok=True)
    r = sh("mount", "-t", "ext4", dev, mnt)
    assert r.returncode == 0, r.stderr
def umount(mnt):
    r = sh("umount", mnt)
    assert r.returncode == 0, r.stderr
def step(name, fn):
    try:
        out[name] = fn()
    except BaseException as exc:
        out[name] = "raised " + type(exc).__name__ + ": " + str(exc)

image = Path("/base.ext4")
size = image.stat().st_size
image_sum = digest(image, size)
pool = thin.Pool("tp", Path("/var/lib/dm"), data_size=512 << 20, metadata_size=16 << 20)
pool.ensure(); pool.ensure()
out["pool_status"] = pool.status()

real_copy = thin.copy_image
def failing(img, dev):
    with open(dev, "r+b", buffering=0) as d:
        d.write(b"x" * 65536)
    raise OSError(5, "injected I/O error half-way")
thin.copy_image = failing
step("failed_build", lambda: pool.base("k1", image))
thin.copy_image = real_copy
out["after_fail_registry"] = pool._read()
out["after_fail_dm"] = sorted(l.split()[0] for l in sh("dmsetup", "ls").stdout.splitlines() if l.strip())

base = pool.base("k1", image)
out["base_again_same"] = pool.base("k1", image) == base

a = pool.snapshot("runv-a", "k1")
b = pool.snapshot("runv-b", "k1")
mount(a, "/mnt/a"); mount(b, "/mnt/b")
Path("/mnt/a/same").write_text("a"); Path("/mnt/b/same").write_text("b")
os.remove("/mnt/a/etc/passwd")
out["own"] = [Path("/mnt/a/same").read_text(), Path("/mnt/b/same").read_text(), os.path.exists("/mnt/b/etc/passwd")]
umount("/mnt/a")
step("remove_while_held", lambda: pool.remove_snapshot("runv-b"))
umount("/mnt/b")
pool.remove_snapshot("runv-b")
pool.remove_snapshot("runv-b")  # again: converges
out["b_gone"] = "runv-b" not in pool._read()["snapshots"] and sh("dmsetup", "info", "runv-b").returncode != 0

# runv-a is still registered and active, as after a crash: a new create replaces it
a2 = pool.snapshot("runv-a", "k1")
mount(a2, "/mnt/a")
out["stale_replaced"] = [os.path.exists("/mnt/a/same"), os.path.exists("/mnt/a/etc/passwd")]
umount("/mnt/a")

errors, paths = [], []
def create(i):
    try:
        paths.append(pool.snapshot(f"runv-c{i}", "k1"))
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
ids = [e["id"] for e in pool._read()["snapshots"].values()]
out["concurrent"] = {"errors": errors, "paths": sorted(paths), "unique_ids": len(set(ids)) == len(ids), "count": len(ids)}
for i in range(4):
    pool.remove_snapshot(f"runv-c{i}")
pool.remove_snapshot("runv-a")

# a container's state directory gone with a crash: the next snapshot made reclaims its own
for owner in ("live", "dead"):
    os.makedirs(f"/var/lib/owners/{owner}")
    pool.snapshot(f"runv-{owner}", "k1", owner=f"/var/lib/owners/{owner}")
os.rmdir("/var/lib/owners/dead")
pool.snapshot("runv-next", "k1", owner="/var/lib/owners/live")
out["reclaimed"] = [sorted(pool._read()["snapshots"]), sh("dmsetup", "info", "runv-dead").returncode != 0]
pool.remove_snapshot("runv-live")
pool.remove_snapshot("runv-next")

check = pool._activate("tp-check", base["id"], base["sectors"], readonly=True)
out["base_unchanged"] = digest(check, size) == image_sum
thin.dm_remove("tp-check")

small = thin.Pool("tiny", Path("/var/lib/dm2"), data_size=24 << 20, metadata_size=4 << 20)
small.base("k1", image)
full = small.snapshot("runv-full", "k1")
mount(full, "/mnt/f")
r = sh("dd", "if=/dev/zero", "of=/mnt/f/big", "bs=1M", "count=64", "conv=fsync")
out["full_write_failed"] = r.returncode != 0
sh("umount", "/mnt/f")
step("create_on_full_pool", lambda: small.snapshot("runv-full2", "k1"))
small.remove_snapshot("runv-full")
small.destroy()
pool.destroy()
out["dm_left"] = sh("dmsetup", "ls").stdout.strip()
out["loops_left"] = sh("losetup", "-a").stdout.strip()
print("RESULT " + json.dumps(out), flush=True)
'''


@pytest.fixture(scope="session")
def helper_rootfs(tmp_path_factory) -> Path:
    rootfs = make_rootfs(tmp_path_factory.mktemp("dmhelper") / "rootfs")
    for sub in ("run", "mnt", "var/lib"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    for binary in ("/usr/bin/python3.11", "/usr/sbin/dmsetup", "/usr/sbin/losetup"):
        add_host_binary(Path(binary), rootfs)
    stdlib = Path("/usr/lib/python3.11")
    shutil.copytree(stdlib, rootfs / "usr/lib/python3.11", symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in STDLIB_SKIP and Path(d) == stdlib])
    for library in (stdlib / "lib-dynload").glob("*.so"):
        add_host_binary(library, rootfs)
    package = rootfs / "opt/runv"
    (package / "runv").mkdir(parents=True)
    (package / "runv_devicemapper").mkdir(parents=True)
    for name in ("__init__.py", "api/__init__.py", "api/errors.py", "api/tools.py", "api/images.py"):
        (package / "runv" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CORE / "runv" / name, package / "runv" / name)
    shutil.copy2(PLUGIN / "thin.py", package / "runv_devicemapper/thin.py")  # the code under test
    (package / "runv_devicemapper/__init__.py").write_text("")  # the hook glue needs pluggy; not tested here
    small = make_rootfs(tmp_path_factory.mktemp("dmbase") / "rootfs")
    base = images.base_image(small, tmp_path_factory.mktemp("dmcache"), 32 << 20)
    shutil.copy2(base, rootfs / "base.ext4")
    (rootfs / "base.ext4").chmod(0o644)
    (rootfs / "scenario.py").write_text(SCENARIO)
    return rootfs


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """``kernel(devices, module, control)``: the kernel's answers kernel_has_device_mapper reads,
    faked: the block devices /proc/devices lists, whether /sys/module/dm_mod and
    /dev/mapper/control exist."""
    files = {name: tmp_path / "kernel" / name for name in runv_devicemapper.KERNEL}
    monkeypatch.setattr(runv_devicemapper, "KERNEL", {name: str(path) for name, path in files.items()})
    files["devices"].parent.mkdir()

    def fake(devices: str, module: bool, control: bool) -> None:
        files["devices"].write_text(devices)
        for name, there in (("module", module), ("control", control)):
            if there:
                files[name].mkdir(exist_ok=True)
            elif files[name].exists():
                files[name].rmdir()

    return fake


NO_DM = "Block devices:\n  7 loop\n  8 sd\n"


def test_probe_and_attach_say_a_kernel_without_device_mapper_has_none(kernel):
    kernel(NO_DM, module=False, control=False)
    reason = runv_devicemapper.kernel_has_device_mapper()
    assert reason.startswith("this host's kernel has no device-mapper (no dm_mod:")
    assert runv_devicemapper.probe().startswith(reason)
    with pytest.raises(RunvError) as refused:
        runv_devicemapper.attach_storage(container=None)
    assert str(refused.value) == f"storage devicemapper cannot run here: {reason}"


def test_a_device_mapper_is_found_by_its_device_or_its_module_and_needs_its_control_node(kernel):
    kernel(NO_DM + "253 device-mapper\n", module=False, control=False)
    assert runv_devicemapper.kernel_has_device_mapper().startswith("/dev/mapper/control is missing")
    kernel(NO_DM, module=True, control=True)
    assert runv_devicemapper.kernel_has_device_mapper() is None


def test_snapshot_names_live_in_runvs_own_namespace_one_per_root(tmp_path):
    one, other = container(tmp_path / "a", cid="pool"), container(tmp_path / "b", cid="pool")
    name = runv_devicemapper.snapshot_name(one)
    assert name.startswith("runv-ct-pool-") and not name.startswith("runv-pool")
    assert name != runv_devicemapper.snapshot_name(other)  # the same id in two roots: two devices


@pytest.mark.usefixtures("hermetic")
def test_runv_check_reports_the_probes_reason():
    reason = runv_devicemapper.probe()
    check = subprocess.run([RUNV, "check"], capture_output=True, text=True, timeout=60)
    (line,) = [line for line in check.stdout.splitlines() if line.split()[:2] == ["storage", "devicemapper"]]
    installed = f"runv-devicemapper {metadata.version('runv-devicemapper')}"
    assert line.split(None, 3)[2:] == (["unusable", reason] if reason else ["ok", installed]), line


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_thin_pool_snapshots_in_a_helper_vm(runv, helper_rootfs, storage_config, tmp_path):
    bundle = tmp_path / "helper"
    bundle.mkdir()
    (bundle / "rootfs").symlink_to(helper_rootfs)
    config = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/usr/bin/python3.11", "-S", "/scenario.py"], "env": ["PATH=/usr/sbin:/usr/bin:/bin"],
                    "cwd": "/"},
        "root": {"path": str(helper_rootfs)},
        "annotations": {"io.runv.storage.mode": "block", "io.runv.guest-devices": "true"},  # loop, device-mapper
    }
    (bundle / "config.json").write_text(json.dumps(config))
    result = runv("run", "--bundle", bundle, "dmhelper", timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    print(json.dumps(out, indent=1), file=sys.stderr)
    assert out["pool_status"]["used_data"] == 0 and out["pool_status"]["mode"] == "rw"
    # a base build failing half-way leaves no entry and no device; the next build works
    assert "injected I/O error half-way" in out["failed_build"]
    assert out["after_fail_registry"]["bases"] == {} and out["after_fail_dm"] == ["tp"]
    assert out["base_again_same"] is True
    # two snapshots of one base: each sees its own writes only
    assert out["own"] == ["a", "b", True]
    assert "in use" in out["remove_while_held"]
    assert out["b_gone"] is True
    assert out["stale_replaced"] == [False, True]
    assert out["concurrent"] == {"errors": [], "paths": [f"/dev/mapper/runv-c{i}" for i in range(4)],
                                 "unique_ids": True, "count": 5}
    assert out["reclaimed"] == [["runv-live", "runv-next"], True]  # only the snapshot whose owner is gone
    assert out["base_unchanged"] is True  # byte for byte, after every snapshot wrote and deleted
    assert out["full_write_failed"] is True
    assert "thin pool tiny is full" in out["create_on_full_pool"]
    assert out["dm_left"] in ("", "No devices found") and out["loops_left"] == ""
    assert os.listdir(storage_config.containers) == []  # the helper's qcow2 went with it

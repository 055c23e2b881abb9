"""The devicemapper plugin on a real kernel device-mapper.

This host's kernel has none, but runv's guest kernel has dm-thin-pool and loop. So the
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
from pathlib import Path

import pytest

import runv
import runv_devicemapper
from runv.api import images
from runv.guest.builder import shared_libraries
from runv.testing.host import RUNV, make_rootfs

ROOT = Path(runv.__file__).parent.parent
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


def copy_host_file(path: Path, rootfs: Path) -> None:
    """``path`` (symlinks resolved) at the same path in ``rootfs``."""
    target = rootfs / str(path).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path.resolve(), target)


def add_binary(path: Path, rootfs: Path) -> None:
    copy_host_file(path, rootfs)
    for library in shared_libraries(path):
        copy_host_file(library, rootfs)


@pytest.fixture(scope="session")
def helper_rootfs(tmp_path_factory) -> Path:
    rootfs = make_rootfs(tmp_path_factory.mktemp("dmhelper") / "rootfs")
    for sub in ("run", "mnt", "var/lib"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    for binary in ("/usr/bin/python3.11", "/usr/sbin/dmsetup", "/usr/sbin/losetup"):
        add_binary(Path(binary), rootfs)
    stdlib = Path("/usr/lib/python3.11")
    shutil.copytree(stdlib, rootfs / "usr/lib/python3.11", symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in STDLIB_SKIP and Path(d) == stdlib])
    for library in (stdlib / "lib-dynload").glob("*.so"):
        for dependency in shared_libraries(library):
            copy_host_file(dependency, rootfs)
    package = rootfs / "opt/runv"
    (package / "runv").mkdir(parents=True)
    (package / "runv_devicemapper").mkdir(parents=True)
    for name in ("__init__.py", "api/__init__.py", "api/errors.py", "api/tools.py", "api/images.py"):
        (package / "runv" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "runv" / name, package / "runv" / name)
    shutil.copy2(PLUGIN / "thin.py", package / "runv_devicemapper/thin.py")  # the code under test
    (package / "runv_devicemapper/__init__.py").write_text("")  # the hook glue needs pluggy; not tested here
    small = make_rootfs(tmp_path_factory.mktemp("dmbase") / "rootfs")
    base = images.base_image(small, tmp_path_factory.mktemp("dmcache"), 32 << 20)
    shutil.copy2(base, rootfs / "base.ext4")
    (rootfs / "base.ext4").chmod(0o644)
    (rootfs / "scenario.py").write_text(SCENARIO)
    return rootfs


def test_probe_says_this_kernel_has_no_device_mapper():
    reason = runv_devicemapper.probe()
    if "device-mapper" in Path("/proc/devices").read_text():
        pytest.skip("this host has a device-mapper")
    assert "this host's kernel has no device-mapper" in reason
    check = subprocess.run([RUNV, "check"], capture_output=True, text=True)
    assert any(line.startswith("storage") and "devicemapper" in line and "no device-mapper" in line
               for line in check.stdout.splitlines()), check.stdout


def test_attach_refuses_clearly_without_device_mapper(tmp_path):
    if "device-mapper" in Path("/proc/devices").read_text():
        pytest.skip("this host has a device-mapper")
    from runv.api.errors import RunvError

    with pytest.raises(RunvError, match="storage devicemapper cannot run here: this host's kernel has no device-mapper"):
        runv_devicemapper.attach_storage(container=None)


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_thin_pool_snapshots_in_a_helper_vm(runv, helper_rootfs, tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\ncache_dir = "{tmp_path / "cache"}"\ncontainers_dir = "{tmp_path / "containers"}"\n')
    monkeypatch.setenv("RUNV_CONFIG", str(cfg))
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
    assert out["base_unchanged"] is True  # byte for byte, after every snapshot wrote and deleted
    assert out["full_write_failed"] is True
    assert "thin pool tiny is full" in out["create_on_full_pool"]
    assert out["dm_left"] in ("", "No devices found") and out["loops_left"] == ""
    assert os.listdir(tmp_path / "containers") == []  # the helper's qcow2 went with it

"""The ext4 base images of a bundle's rootfs (runv.api.images), cached by content: built once
however many build at a time, read-only, and nothing left by a build that fails half-way."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from runv.api import images
from runv.api.errors import RunvError


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

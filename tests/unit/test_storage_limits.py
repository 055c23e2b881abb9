"""Storage sizes an image may choose (annotations) are capped, malformed ones refused, in one
line; a container's disk files live in its own directory under ``containers_dir`` (not in
``--root``'s RAM), unique per (root, id), and nothing of it survives a failed create or a
detach. Whole creates run on the fake VMM; the bundle plugin's hooks are also called as the
core calls them."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from test_bundle_safety import one_line_error

import runv_bundle
from runv.api import images
from runv.api import storage as storage_config
from runv.api.errors import RunvError
from runv.testing import container, hooks_with


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A runv config whose cache and containers directories live under the test's tmp dir;
    ``config(**settings)`` adds ``[storage]`` lines. Returns its path."""
    path = tmp_path / "config.toml"

    def write(**extra):
        lines = [f'cache_dir = "{tmp_path / "cache"}"', f'containers_dir = "{tmp_path / "containers"}"']
        lines += [f'{key} = "{value}"' for key, value in extra.items()]
        path.write_text("[storage]\n" + "\n".join(lines) + "\n")
        monkeypatch.setenv("RUNV_CONFIG", str(path))
        return path

    write()
    write.path = path
    return write


def leftovers(tmp_path) -> list[str]:
    """Whatever is in the containers directory."""
    top = tmp_path / "containers"
    return sorted(os.listdir(top)) if top.exists() else []


# ---------------------------------------------------------------- the settings


@pytest.mark.parametrize("key, value, limit", [
    ("upper-size", "65G", "64G ([storage] max_upper_size"),
    ("upper-size", "1T", "64G ([storage] max_upper_size"),
    ("base-size", "100G", "64G ([storage] max_base_size"),
    ("upper-size", "999999999999999999999999T", "64G ([storage] max_upper_size"),
])
def test_a_size_above_its_maximum_is_refused_naming_annotation_value_and_maximum(config, key, value, limit):
    with pytest.raises(RunvError) as info:
        storage_config.settings({f"io.runv.storage.{key}": value})
    message = str(info.value)
    assert message.startswith(f"annotation io.runv.storage.{key}: size {value} is above the maximum {limit}")
    assert str(config.path) in message and "\n" not in message


@pytest.mark.parametrize("value", ["lots", "-1", "0", "1.5G", "", "G", "1e9", "0x10", "4GG", "²", "١٢G", "4 Gb x"])
def test_a_malformed_size_is_one_line(config, value):
    with pytest.raises(RunvError) as info:
        storage_config.settings({"io.runv.storage.upper-size": value})
    assert str(info.value) == (f"annotation io.runv.storage.upper-size: invalid size {value!r}: use bytes or a number "
                               "with K, M, G or T")


def test_sizes_within_the_limits_and_their_spellings(config):
    for text, size in (("4GiB", 4 << 30), ("512m", 512 << 20), ("1073741824", 1 << 30), ("64G", 64 << 30), ("16M", 16 << 20)):
        assert storage_config.settings({"io.runv.storage.upper-size": text})["upper_size"] == size
    defaults = storage_config.settings({})
    assert (defaults["upper_size"], defaults["base_size"]) == (4 << 30, 2 << 30)
    assert (defaults["max_upper_size"], defaults["max_base_size"]) == (64 << 30, 64 << 30)


def test_the_default_containers_directory_is_on_disk_not_in_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNV_CONFIG", str(tmp_path / "none.toml"))
    assert str(storage_config.settings({})["containers_dir"]) == "/var/lib/runv/containers"


def test_the_maxima_come_from_the_config_file(config):
    config(max_upper_size="1G", max_base_size="512M", upper_size="512M", base_size="256M")
    assert storage_config.settings({"io.runv.storage.upper-size": "1G"})["upper_size"] == 1 << 30
    with pytest.raises(RunvError, match=r"upper-size: size 1025M is above the maximum 1G \(\[storage\] max_upper_size"):
        storage_config.settings({"io.runv.storage.upper-size": "1025M"})
    with pytest.raises(RunvError, match=r"base-size: size 1G is above the maximum 512M"):
        storage_config.settings({"io.runv.storage.base-size": "1G"})


def test_a_configured_size_above_the_configured_maximum_names_the_file(config):
    config(upper_size="100G")
    with pytest.raises(RunvError) as info:
        storage_config.settings({})
    assert str(info.value) == (f"[storage] upper_size in {config.path}: size 100G is above the maximum 64G "
                               f"([storage] max_upper_size in {config.path})")
    config(max_base_size="huge")
    with pytest.raises(RunvError, match=r"^\[storage\] max_base_size in .*: invalid size 'huge'"):
        storage_config.settings({})


def test_an_upper_layer_too_small_for_ext4_is_refused(config):
    with pytest.raises(RunvError, match=r"^annotation io.runv.storage.upper-size: size 1M is below the minimum 16M$"):
        storage_config.settings({"io.runv.storage.upper-size": "1M"})


@pytest.mark.parametrize("key", ["max-upper-size", "cache-dir", "containers-dir", "dm-data-size", "upper_sizes"])
def test_an_image_cannot_set_the_limits_or_the_directories(config, key):
    with pytest.raises(RunvError) as info:
        storage_config.settings({f"io.runv.storage.{key}": "/tmp/x"})
    assert str(info.value).startswith(f"annotation io.runv.storage.{key}: not a storage setting a container may choose")


# ---------------------------------------------------------------- the container's own directory


def test_overlay_upper_lives_in_its_own_0700_directory_until_detach(tmp_path, config):
    box = container(tmp_path, annotations={"io.runv.storage.mode": "overlay", "io.runv.storage.upper-size": "64M"})
    box.state_dir.mkdir()
    hooks = hooks_with(runv_bundle)
    attachment = hooks.attach_storage(container=box)
    (disk,) = attachment.disks
    directory = disk.path.parent
    assert directory.parent == tmp_path / "containers" and disk.path.name == "upper.img"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert os.stat(disk.path).st_size == 64 << 20 and os.stat(disk.path).st_blocks * 512 < 16 << 20  # sparse
    assert not any(box.state_dir.iterdir())  # nothing big in --root
    hooks.detach_storage(container=box, attachment=attachment)
    assert leftovers(tmp_path) == []
    hooks.detach_storage(container=box, attachment=attachment)  # converges


@pytest.mark.skipif(shutil.which(images.QEMU_IMG) is None, reason="block mode's overlays need qemu-img (QEMU's)")
def test_block_qcow2_in_its_own_directory_base_in_the_cache(tmp_path, config):
    box = container(tmp_path, annotations={"io.runv.storage.mode": "block"})
    (box.rootfs / "etc").mkdir()
    box.state_dir.mkdir()
    hooks = hooks_with(runv_bundle)
    attachment = hooks.attach_storage(container=box)
    (disk,) = attachment.disks
    assert disk.path.parent.parent == tmp_path / "containers" and disk.path.name == "rootfs.qcow2"
    (base,) = (tmp_path / "cache").glob("base-*.ext4")
    hooks.detach_storage(container=box, attachment=attachment)
    assert leftovers(tmp_path) == [] and base.is_file()  # the shared base stays


def test_two_roots_with_the_same_id_never_share_a_directory(tmp_path, config):
    one = container(tmp_path / "one", cid="same", annotations={"io.runv.storage.overlay": "true"})
    two = container(tmp_path / "two", cid="same", annotations={"io.runv.storage.overlay": "true"})
    hooks = hooks_with(runv_bundle)
    for box in (one, two):
        box.state_dir.mkdir()
    first, second = (hooks.attach_storage(container=box) for box in (one, two))
    assert first.data["dir"] != second.data["dir"] and len(leftovers(tmp_path)) == 2
    assert all(name.startswith("same-") for name in leftovers(tmp_path))
    hooks.detach_storage(container=one, attachment=first)
    assert second.disks[0].path.is_file()  # the other root's container keeps its upper layer
    hooks.detach_storage(container=two, attachment=second)
    assert leftovers(tmp_path) == []


def test_a_failing_format_leaves_no_directory(tmp_path, config, monkeypatch):
    box = container(tmp_path, annotations={"io.runv.storage.overlay": "true"})
    box.state_dir.mkdir()
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / images.MKFS).write_text("#!/bin/sh\necho 'mkfs.ext4: No space left on device' >&2\nexit 1\n")
    (tools / images.MKFS).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    with pytest.raises(RunvError, match="cannot format .*upper.img.*No space left on device"):
        hooks_with(runv_bundle).attach_storage(container=box)
    assert leftovers(tmp_path) == []


def test_what_a_crashed_create_left_is_replaced(tmp_path, config):
    box = container(tmp_path, annotations={"io.runv.storage.overlay": "true", "io.runv.storage.upper-size": "32M"})
    box.state_dir.mkdir()
    stale = tmp_path / "containers" / storage_config.container_key(box)
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x")
    hooks = hooks_with(runv_bundle)
    attachment = hooks.attach_storage(container=box)
    assert sorted(os.listdir(stale)) == ["upper.img"]
    hooks.detach_storage(container=box, attachment=attachment)
    assert leftovers(tmp_path) == []


def test_detach_refuses_to_remove_a_directory_not_made_for_the_container(tmp_path, config):
    box = container(tmp_path)
    victim = tmp_path / "precious"
    victim.mkdir()
    for path in (victim, tmp_path / "containers" / "other-0123456789ab", "test-0123456789ab"):
        with pytest.raises(RunvError, match="not a directory runv made for it"):
            storage_config.remove_container_dir(box, str(path))
    assert victim.is_dir()


# ---------------------------------------------------------------- whole creates (fake VMM)


@pytest.mark.parametrize("annotations, words", [
    ({"io.runv.storage.mode": "overlay", "io.runv.storage.upper-size": "2T"},
     "annotation io.runv.storage.upper-size: size 2T is above the maximum 64G"),
    ({"io.runv.storage.mode": "block", "io.runv.storage.base-size": "65G"},
     "annotation io.runv.storage.base-size: size 65G is above the maximum 64G"),
    ({"io.runv.storage.overlay": "true", "io.runv.storage.upper-size": "²G"},
     "annotation io.runv.storage.upper-size: invalid size '²G'"),
    ({"io.runv.storage.max-upper-size": "1P"}, "annotation io.runv.storage.max-upper-size: not a storage setting"),
])
def test_create_with_a_bad_size_fails_in_one_line_and_leaves_nothing(fake, make_bundle, root, tmp_path, config,
                                                                      annotations, words):
    env = {**fake.env, "RUNV_CONFIG": str(config.path)}
    result = fake("create", "--bundle", make_bundle(["true"], annotations=annotations), "box", env=env)
    one_line_error(result, words)
    assert not (root / "box").exists() and leftovers(tmp_path) == []
    assert not list((tmp_path / "cache").glob("base-*"))  # refused before any base was built


def test_a_create_failing_after_the_upper_was_made_leaves_nothing(fake, make_bundle, root, tmp_path, config):
    """The fake VMM takes no disks: the upper layer is made, then the VM is refused before boot."""
    env = {**fake.env, "RUNV_CONFIG": str(config.path)}
    bundle = make_bundle(["true"], annotations={"io.runv.storage.mode": "overlay", "io.runv.storage.upper-size": "64G"})
    one_line_error(fake("create", "--bundle", bundle, "box", env=env), "cannot attach raw disks")
    assert (tmp_path / "containers").is_dir()  # it was there ...
    assert not (root / "box").exists() and leftovers(tmp_path) == []  # ... and went with the failed create

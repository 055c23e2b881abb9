"""Storage sizes an image may choose (annotations) are capped, malformed ones refused, in one
line; a container's own directory under ``containers_dir`` is removed only when runv made it
for that container, and nothing of it survives a failed create (whole creates on the fake
VMM). The bundle plugin's hooks, which make those directories: plugins/bundle/tests."""

from __future__ import annotations

import pytest
from test_bundle_safety import one_line_error

from runv.api.errors import RunvError
from runv.api.storage import OWNER, container_dir, reclaim, remove_container_dir, settings
from runv.testing import container

# ---------------------------------------------------------------- the settings


@pytest.mark.parametrize("key, value, limit", [
    ("upper-size", "65G", "64G ([storage] max_upper_size"),
    ("upper-size", "1T", "64G ([storage] max_upper_size"),
    ("base-size", "100G", "64G ([storage] max_base_size"),
    ("upper-size", "999999999999999999999999T", "64G ([storage] max_upper_size"),
])
def test_a_size_above_its_maximum_is_refused_naming_annotation_value_and_maximum(storage_config, key, value, limit):
    with pytest.raises(RunvError) as info:
        settings({f"io.runv.storage.{key}": value})
    message = str(info.value)
    assert message.startswith(f"annotation io.runv.storage.{key}: size {value} is above the maximum {limit}")
    assert str(storage_config.path) in message and "\n" not in message


@pytest.mark.parametrize("value", ["lots", "-1", "0", "1.5G", "", "G", "1e9", "0x10", "4GG", "²", "١٢G", "4 Gb x"])
def test_a_malformed_size_is_one_line(storage_config, value):
    with pytest.raises(RunvError) as info:
        settings({"io.runv.storage.upper-size": value})
    assert str(info.value) == (f"annotation io.runv.storage.upper-size: invalid size {value!r}: use bytes or a number "
                               "with K, M, G or T")


def test_sizes_within_the_limits_and_their_spellings(storage_config):
    for text, size in (("4GiB", 4 << 30), ("512m", 512 << 20), ("1073741824", 1 << 30), ("64G", 64 << 30), ("16M", 16 << 20)):
        assert settings({"io.runv.storage.upper-size": text})["upper_size"] == size
    defaults = settings({})
    assert (defaults["upper_size"], defaults["base_size"]) == (4 << 30, 2 << 30)
    assert (defaults["max_upper_size"], defaults["max_base_size"]) == (64 << 30, 64 << 30)


def test_the_default_containers_directory_is_on_disk_not_in_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNV_CONFIG", str(tmp_path / "none.toml"))
    assert str(settings({})["containers_dir"]) == "/var/lib/runv/containers"


def test_the_maxima_come_from_the_config_file(storage_config):
    storage_config(max_upper_size="1G", max_base_size="512M", upper_size="512M", base_size="256M")
    assert settings({"io.runv.storage.upper-size": "1G"})["upper_size"] == 1 << 30
    with pytest.raises(RunvError, match=r"upper-size: size 1025M is above the maximum 1G \(\[storage\] max_upper_size"):
        settings({"io.runv.storage.upper-size": "1025M"})
    with pytest.raises(RunvError, match=r"base-size: size 1G is above the maximum 512M"):
        settings({"io.runv.storage.base-size": "1G"})


def test_a_configured_size_above_the_configured_maximum_names_the_file(storage_config):
    storage_config(upper_size="100G")
    with pytest.raises(RunvError) as info:
        settings({})
    assert str(info.value) == (f"[storage] upper_size in {storage_config.path}: size 100G is above the maximum 64G "
                               f"([storage] max_upper_size in {storage_config.path})")
    storage_config(max_base_size="huge")
    with pytest.raises(RunvError, match=r"^\[storage\] max_base_size in .*: invalid size 'huge'"):
        settings({})


def test_an_upper_layer_too_small_for_ext4_is_refused(storage_config):
    with pytest.raises(RunvError, match=r"^annotation io.runv.storage.upper-size: size 1M is below the minimum 16M$"):
        settings({"io.runv.storage.upper-size": "1M"})


@pytest.mark.parametrize("key", ["max-upper-size", "cache-dir", "containers-dir", "dm-data-size", "upper_sizes"])
def test_an_image_cannot_set_the_limits_or_the_directories(storage_config, key):
    with pytest.raises(RunvError) as info:
        settings({f"io.runv.storage.{key}": "/tmp/x"})
    assert str(info.value).startswith(f"annotation io.runv.storage.{key}: not a storage setting a container may choose")


# ---------------------------------------------------------------- the container's own directory


def test_detach_refuses_to_remove_a_directory_not_made_for_the_container(tmp_path, storage_config):
    box = container(tmp_path)
    victim = tmp_path / "precious"
    victim.mkdir()
    for path in (victim, storage_config.containers / "other-0123456789ab", "test-0123456789ab"):
        with pytest.raises(RunvError, match="not a directory runv made for it"):
            remove_container_dir(box, str(path))
    assert victim.is_dir()


def test_what_dead_containers_left_is_reclaimed_by_the_next_never_a_live_ones(tmp_path, storage_config, caplog):
    """After a crash (runv and the VMs dead, ``/run`` emptied) a container's directory names
    a state directory that is gone: the next container's directory reclaims it, and logs
    it; a live (or stopped) container's and one naming no owner (an earlier release's) stay."""
    caplog.set_level("INFO", logger="runv.storage")
    options = settings()
    live, dead, later = (container(tmp_path / cid, cid=cid) for cid in ("live", "dead", "next"))
    for box in (live, dead, later):
        box.state_dir.mkdir()  # a create claims it before its storage is attached
    live_dir, dead_dir = container_dir(live, options), container_dir(dead, options)
    (dead_dir / "upper.img").write_bytes(b"x" * 4096)
    assert (live_dir / OWNER).read_text() == str(live.state_dir.resolve())
    unowned = options["containers_dir"] / "old-0123456789ab"
    unowned.mkdir()
    dead.state_dir.rmdir()  # what a reboot does to /run/runv
    fresh = container_dir(later, options)
    assert sorted(p.name for p in options["containers_dir"].iterdir()) == sorted([live_dir.name, unowned.name, fresh.name])
    assert f"reclaimed {dead_dir}: its container's state directory {dead.state_dir.resolve()} is gone" in caplog.text
    assert reclaim(options["containers_dir"]) == []  # converged


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
def test_create_with_a_bad_size_fails_in_one_line_and_leaves_nothing(fake, make_bundle, root, storage_config,
                                                                      annotations, words):
    env = {**fake.env, "RUNV_CONFIG": str(storage_config.path)}
    result = fake("create", "--bundle", make_bundle(["true"], annotations=annotations), "box", env=env)
    one_line_error(result, words)
    assert not (root / "box").exists() and storage_config.own_dirs() == []
    assert not list(storage_config.cache.glob("base-*"))  # refused before any base was built


def test_a_create_failing_after_the_upper_was_made_leaves_nothing(fake, make_bundle, root, storage_config):
    """The fake VMM takes no disks: the upper layer is made, then the VM is refused before boot."""
    env = {**fake.env, "RUNV_CONFIG": str(storage_config.path)}
    bundle = make_bundle(["true"], annotations={"io.runv.storage.mode": "overlay", "io.runv.storage.upper-size": "64G"})
    one_line_error(fake("create", "--bundle", bundle, "box", env=env), "cannot attach raw disks")
    assert storage_config.containers.is_dir()  # it was there ...
    assert not (root / "box").exists() and storage_config.own_dirs() == []  # ... and went with the failed create

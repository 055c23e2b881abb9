"""Bad input: one line on stderr naming what is wrong, exit 1, nothing left behind, decided
before any VM (on the fake VMM; bad input that needs a VM to show: tests/vm/test_vm_bad_input.py)."""

import json
import os

import pytest

from runv.testing import vm_processes_in


def assert_clean_failure(result, root, *needles):
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not root.exists() or os.listdir(root) == []
    assert not vm_processes_in(root)


def test_missing_bundle(fake, root, tmp_path):
    assert_clean_failure(fake("create", "-b", tmp_path / "nope", "x"), root, "bundle", "nope", "does not exist")


def test_missing_config(fake, root, tmp_path):
    assert_clean_failure(fake("create", "-b", tmp_path, "x"), root, "config.json does not exist")


def test_malformed_json(fake, root, tmp_path):
    (tmp_path / "config.json").write_text("{")
    assert_clean_failure(fake("create", "-b", tmp_path, "x"), root, "config.json is not valid JSON")


def test_no_args(fake, root, make_bundle):
    bundle = make_bundle(["true"])
    config = json.loads((bundle / "config.json").read_text())
    del config["process"]["args"]
    (bundle / "config.json").write_text(json.dumps(config))
    assert_clean_failure(fake("create", "-b", bundle, "x"), root, "process.args")


def test_missing_rootfs(fake, root, make_bundle):
    bundle = make_bundle(["true"])
    (bundle / "rootfs").rename(bundle / "elsewhere")
    assert_clean_failure(fake("create", "-b", bundle, "x"), root, "root.path", "is not a directory")


@pytest.mark.parametrize("bad", ["a/b", "..", "../x", ""])
def test_bad_ids(fake, root, make_bundle, bad):
    assert_clean_failure(fake("create", "-b", make_bundle(["true"]), bad), root, "container id")


def test_missing_kernel_says_build_it(fake, root, make_bundle, tmp_path):
    result = fake("--kernel", tmp_path / "vmlinux", "create", "-b", make_bundle(["true"]), "x")
    assert_clean_failure(result, root, "vmlinux does not exist", "runv guest build")


@pytest.mark.parametrize("flag, kind", [("--hypervisor", "hypervisor"), ("--storage", "storage")])
def test_unknown_plugin_lists_installed(fake, root, make_bundle, flag, kind):
    result = fake(flag, "nosuch", "create", "-b", make_bundle(["true"]), "x")
    assert_clean_failure(result, root, f"{kind} plugin 'nosuch' is not installed", "available:")


def test_unknown_container_commands(fake, root):
    for args in (["state", "ghost"], ["start", "ghost"], ["kill", "ghost"], ["delete", "ghost"]):
        assert_clean_failure(fake(*args), root, "container ghost does not exist")


def test_missing_program(fake, root, make_bundle):
    result = fake("run", "-b", make_bundle(["/bin/nonexistent"]), "x")
    assert result.returncode != 0
    assert 'exec: "/bin/nonexistent"' in result.stderr
    assert not vm_processes_in(root) and (not root.exists() or os.listdir(root) == [])  # refused before any VM

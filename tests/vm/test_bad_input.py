"""Bad input: one line on stderr naming what is wrong, exit 1, nothing left behind."""

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


def test_missing_bundle(runv, root, tmp_path):
    assert_clean_failure(runv("create", "-b", tmp_path / "nope", "x"), root, "bundle", "nope", "does not exist")


def test_missing_config(runv, root, tmp_path):
    assert_clean_failure(runv("create", "-b", tmp_path, "x"), root, "config.json does not exist")


def test_malformed_json(runv, root, tmp_path):
    (tmp_path / "config.json").write_text("{")
    assert_clean_failure(runv("create", "-b", tmp_path, "x"), root, "config.json is not valid JSON")


def test_no_args(runv, root, make_bundle):
    bundle = make_bundle(["true"])
    config = json.loads((bundle / "config.json").read_text())
    del config["process"]["args"]
    (bundle / "config.json").write_text(json.dumps(config))
    assert_clean_failure(runv("create", "-b", bundle, "x"), root, "process.args")


def test_missing_rootfs(runv, root, make_bundle):
    bundle = make_bundle(["true"])
    (bundle / "rootfs").rename(bundle / "elsewhere")
    assert_clean_failure(runv("create", "-b", bundle, "x"), root, "root.path", "is not a directory")


@pytest.mark.parametrize("bad", ["a/b", "..", "../x", ""])
def test_bad_ids(runv, root, make_bundle, bad):
    assert_clean_failure(runv("create", "-b", make_bundle(["true"]), bad), root, "container id")


def test_missing_kernel_says_build_it(runv, root, make_bundle, tmp_path):
    result = runv("--kernel", tmp_path / "vmlinux", "create", "-b", make_bundle(["true"]), "x")
    assert_clean_failure(result, root, "vmlinux does not exist", "runv guest build")


@pytest.mark.parametrize("flag, kind", [("--hypervisor", "hypervisor"), ("--storage", "storage")])
def test_unknown_plugin_lists_installed(runv, root, make_bundle, flag, kind):
    result = runv(flag, "nosuch", "create", "-b", make_bundle(["true"]), "x")
    assert_clean_failure(result, root, f"{kind} plugin 'nosuch' is not installed", "available:")


def test_unknown_container_commands(runv, root):
    for args in (["state", "ghost"], ["start", "ghost"], ["kill", "ghost"], ["delete", "ghost"]):
        assert_clean_failure(runv(*args), root, "container ghost does not exist")


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_existing_id_is_refused(runv, root, make_bundle):
    runv("run", "-d", "-b", make_bundle(["sleep", "100"]), "dup", check=True)
    result = runv("create", "-b", make_bundle(["true"], name="other"), "dup")
    assert result.returncode == 1 and "container with id dup already exists" in result.stderr
    assert json.loads(runv("state", "dup", check=True).stdout)["status"] == "running"


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_qemu_failure_shows_its_stderr(runv, root, make_bundle, tmp_path):
    broken = tmp_path / "kernel"
    broken.write_bytes(b"not a kernel")
    result = runv("--kernel", broken, "create", "-b", make_bundle(["true"]), "x")
    assert_clean_failure(result, root)
    assert "qemu" in result.stderr.lower() or "VM" in result.stderr


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_missing_program(runv, root, make_bundle):
    result = runv("run", "-b", make_bundle(["/bin/nonexistent"]), "x")
    assert result.returncode != 0
    assert 'exec: "/bin/nonexistent"' in result.stderr
    assert not vm_processes_in(root) and (not root.exists() or os.listdir(root) == [])  # refused before any VM

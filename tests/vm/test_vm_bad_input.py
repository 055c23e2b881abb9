"""Bad input that needs a VM to show: one line on stderr naming what is wrong, nothing left
behind (what is refused before any VM: tests/unit/test_bad_input.py)."""

import json
import os

import pytest

from runv.testing import vm_processes_in


@pytest.mark.usefixtures("guest_image")
def test_existing_id_is_refused(runv, root, make_bundle):
    runv("run", "-d", "-b", make_bundle(["sleep", "100"]), "dup", check=True)
    result = runv("create", "-b", make_bundle(["true"], name="other"), "dup")
    assert result.returncode == 1 and "container with id dup already exists" in result.stderr
    assert json.loads(runv("state", "dup", check=True).stdout)["status"] == "running"


@pytest.mark.usefixtures("guest_image")
def test_qemu_failure_shows_its_stderr(runv, root, make_bundle, tmp_path):
    broken = tmp_path / "kernel"
    broken.write_bytes(b"not a kernel")
    result = runv("--kernel", broken, "create", "-b", make_bundle(["true"]), "x")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "qemu" in result.stderr.lower() or "VM" in result.stderr
    assert not vm_processes_in(root) and (not root.exists() or os.listdir(root) == [])

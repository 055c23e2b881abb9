"""Shared fixtures: a private --root per test, busybox bundles, and the runv command itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from support import INITRD, KERNEL, RUNV, make_rootfs, run_captured, wait_for_template_makers

from runv.testing import vm_processes_in


@pytest.fixture(scope="session")
def base_rootfs(tmp_path_factory) -> Path:
    return make_rootfs(tmp_path_factory.mktemp("base") / "rootfs")


@pytest.fixture
def make_bundle(tmp_path, base_rootfs):
    """``make_bundle(args, **process)`` -> a bundle directory with its own copy of the rootfs."""

    def make(args, *, readonly=False, terminal=False, name="bundle", **extra):
        bundle = tmp_path / name
        shutil.copytree(base_rootfs, bundle / "rootfs", symlinks=True)
        config = {
            "ociVersion": "1.0.2",
            "process": {"args": list(args), "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/", "terminal": terminal},
            "root": {"path": "rootfs", "readonly": readonly},
            "hostname": "runv-test",
            **extra,
        }
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    return make


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def runv(root):
    """Runs the installed ``runv`` binary with this test's --root; returns CompletedProcess."""
    def call(*args, check=False, timeout=180, **kwargs):
        return run_captured([RUNV, "--root", str(root), *map(str, args)], check=check, timeout=timeout, **kwargs)

    yield call
    if root.is_dir():  # leave nothing behind, whatever the test did
        for cid in os.listdir(root):
            subprocess.run([RUNV, "--root", str(root), "delete", "--force", cid], capture_output=True, timeout=60)
        assert not vm_processes_in(root), "VM processes left behind"


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory) -> Iterator[None]:
    """The guest kernel and initrd the VM tests boot (built once; a no-op when up to date),
    and a VM template of the default shape that every VM test's container starts from
    (``--template auto``; 6 s of boot once instead of per test). RUNV_TEST_TEMPLATES=0: cold."""
    subprocess.run([RUNV, "guest", "build", "--no-template"], check=True, timeout=900)  # the session makes its own
    assert KERNEL.is_file() and INITRD.is_file()
    if "RUNV_CONFIG" not in os.environ:  # no templates made in the background: the suite's load must not depend on test order
        config = tmp_path_factory.mktemp("config") / "config.toml"
        config.write_text("[templates]\nbackground = false\n")
        os.environ["RUNV_CONFIG"] = str(config)
    if os.environ.get("RUNV_TEST_TEMPLATES", "1") != "0" and "RUNV_TEMPLATE_DIR" not in os.environ:
        os.environ["RUNV_TEMPLATE_DIR"] = str(tmp_path_factory.mktemp("templates"))  # the runv fixture's children inherit it
        subprocess.run([RUNV, "template", "create", "test"], check=True, timeout=300)
    yield
    wait_for_template_makers()

"""The unit layer: seconds, no QEMU, no guest image. Whole containers run on the fake VMM
(:mod:`runv.testing.fakevmm`: the real agent as a host process); the rest calls the
core's functions directly. ``base_rootfs`` and ``make_bundle`` come from tests/conftest.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from support import run_captured

from runv.testing import fake_vmm_path, leftovers_in, with_path

RUNV = str(Path(sys.executable).with_name("runv"))


@pytest.fixture(scope="session")
def fake_site(tmp_path_factory) -> Path:
    """A PYTHONPATH directory installing the fake VMM as hypervisor ``fake``."""
    return fake_vmm_path(tmp_path_factory.mktemp("fakevmm"))


@pytest.fixture
def guest_files(tmp_path) -> tuple[Path, Path]:
    """Stand-ins for the guest kernel and initrd (`create` checks they exist; the fake VMM boots neither)."""
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd.img"
    kernel.write_bytes(b"")
    initrd.write_bytes(b"")
    return kernel, initrd


@pytest.fixture
def hermetic(tmp_path, monkeypatch):
    """No host config file, no host templates: this process and its children see only the test's."""
    monkeypatch.setenv("RUNV_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("RUNV_TEMPLATE_DIR", str(tmp_path / "templates"))
    monkeypatch.delenv("RUNV_DISABLE_PLUGINS", raising=False)


@pytest.fixture
def fake(tmp_path, root, fake_site, guest_files, hermetic):
    """``fake(*args)`` runs ``runv --root ROOT --hypervisor fake ARGS`` (a subprocess, output
    through files as a shim holds its caller's stdio); afterwards, whatever the test did,
    every container is deleted and nothing may be left: no process, no mount."""
    kernel, initrd = guest_files
    env = with_path(None, fake_site)

    def call(*args, check=False, timeout=30, **kwargs):
        argv = [RUNV, "--root", str(root), "--kernel", str(kernel), "--initrd", str(initrd), "--hypervisor", "fake",
                *map(str, args)]
        kwargs.setdefault("env", env)
        return run_captured(argv, check=check, timeout=timeout, **kwargs)

    call.env = env
    yield call
    if root.is_dir():
        for cid in os.listdir(root):
            call("delete", "--force", cid)
    assert leftovers_in(tmp_path) == []


def pytest_collection_modifyitems(config, items):
    """The unit layer runs once: where test_no_qemu's child runs it (QEMU hidden), the
    parent deselects its own copies of those tests, which would run the same code again."""
    if os.environ.get("RUNV_UNIT_CHILD") == "1" or not any(item.get_closest_marker("recursive") for item in items):
        return
    here = Path(__file__).resolve().parent
    twice = [item for item in items if here in Path(str(item.fspath)).resolve().parents and not item.get_closest_marker("recursive")]
    if twice:
        config.hook.pytest_deselected(items=twice)
        items[:] = [item for item in items if item not in twice]

"""Fixtures every test directory shares (tests/unit, tests/vm, plugins/*/tests, examples/*/tests):
a private --root per test, busybox bundles, the runv command itself, the guest image the VM
tests boot, the same command on the fake VMM (runv.testing.fakevmm) for tests without QEMU,
and storage directories of the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from runv.testing import fake_vmm_path, leftovers_in, with_path
from runv.testing.host import INITRD, KERNEL, RUNV, make_rootfs, run_captured, wait_for_template_makers


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
    """Runs the installed ``runv`` binary with this test's --root; returns CompletedProcess.
    Afterwards every container is deleted and nothing may be left under the root: no process
    working there (a VMM, its helpers, a shim), no mount, no VM."""
    def call(*args, check=False, timeout=180, **kwargs):
        return run_captured([RUNV, "--root", str(root), *map(str, args)], check=check, timeout=timeout, **kwargs)

    yield call
    if root.is_dir():  # whatever the test did, every container goes
        for cid in os.listdir(root):
            subprocess.run([RUNV, "--root", str(root), "delete", "--force", cid], capture_output=True, timeout=60)
    assert leftovers_in(root) == []  # and with them every process, mount and VM of theirs


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

    argv = [RUNV, "--root", str(root), "--kernel", str(kernel), "--initrd", str(initrd), "--hypervisor", "fake"]

    def call(*args, check=False, timeout=30, **kwargs):
        kwargs.setdefault("env", env)
        return run_captured([*argv, *map(str, args)], check=check, timeout=timeout, **kwargs)

    call.env, call.argv = env, argv
    yield call
    if root.is_dir():
        for cid in os.listdir(root):
            call("delete", "--force", cid)
    assert leftovers_in(tmp_path) == []


class StorageConfig:
    """A runv config file (``RUNV_CONFIG`` for the test and its children) whose [storage]
    cache and containers directories lie in the test's tmp_path; call it with more [storage]
    settings to rewrite it."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "config.toml"
        self.cache = tmp_path / "cache"
        self.containers = tmp_path / "containers"
        self()

    def __call__(self, **settings: str) -> None:
        lines = [f'cache_dir = "{self.cache}"', f'containers_dir = "{self.containers}"']
        lines += [f'{key} = "{value}"' for key, value in settings.items()]
        self.path.write_text("[storage]\n" + "\n".join(lines) + "\n")

    def own_dirs(self) -> list[Path]:
        """The containers' own directories (upper layers, qcow2 overlays) there are now."""
        return sorted(self.containers.iterdir()) if self.containers.is_dir() else []


@pytest.fixture
def storage_config(tmp_path, monkeypatch) -> StorageConfig:
    config = StorageConfig(tmp_path)
    monkeypatch.setenv("RUNV_CONFIG", str(config.path))
    return config

"""The host half of reporting a guest's OOM kills, on this host's real cgroups (no VM): the
kill is repeated in the container's shim leaf, the cgroup of the PID callers know, where
containerd's shim watches (:class:`runv.testing.host.OomWatch`)."""

from __future__ import annotations

import os
import subprocess

import pytest

from runv.api.vmmcgroup import BASE
from runv.testing.host import OomWatch
from runv.vm import cgroupspath, oommirror

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not (BASE / "memory").is_dir() and not (BASE / "cgroup.controllers").exists(),
                                reason="needs root and a memory cgroup")


@pytest.fixture
def placed_shim(tmp_path):
    """A stand-in shim (``sleep``) placed in a real cgroupsPath's ``NAME.shim`` leaf; its state directory."""
    state_dir = tmp_path / "c1"
    state_dir.mkdir()
    shim = subprocess.Popen(["sleep", "600"])
    try:
        cgroupspath.place(state_dir, f"runv-test/oom-{os.getpid()}", shim.pid)
        yield state_dir, shim
    finally:
        shim.kill()
        shim.wait()
        cgroupspath.release(state_dir)
    assert not (BASE / "memory" / "runv-test" / f"oom-{os.getpid()}").exists()


def test_a_guests_oom_kill_is_one_on_the_host_where_containerd_watches(placed_shim):
    state_dir, shim = placed_shim
    directory, v2 = oommirror.leaf(state_dir)
    limit = directory / ("memory.max" if v2 else "memory.limit_in_bytes")
    before = limit.read_text()
    watch = OomWatch(shim.pid)
    try:
        assert watch.directory == directory and watch.kills() == 0
        assert oommirror.mirror(state_dir, "c1")
        assert watch.fired(timeout=5)
        assert watch.kills() == 1
    finally:
        watch.close()
    assert limit.read_text() == before  # the leaf's limit is put back
    assert shim.poll() is None  # the sacrificial child was killed, never the shim
    assert (directory / "cgroup.procs").read_text().split() == [str(shim.pid)]


def test_without_a_cgroups_path_nothing_is_killed(tmp_path):
    assert oommirror.leaf(tmp_path) is None
    assert not oommirror.mirror(tmp_path, "c1")


def test_a_leaf_gone_is_a_logged_refusal(placed_shim, caplog):
    state_dir, _ = placed_shim
    record = state_dir / "cgroup.json"
    record.write_text(record.read_text().replace("oom-", "gone-"))
    assert not oommirror.mirror(state_dir, "c1")
    assert "the guest's OOM kill not repeated" in caplog.text
    record.write_text(record.read_text().replace("gone-", "oom-"))

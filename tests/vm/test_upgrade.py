"""Upgrading runv under running containers: a container whose shim (and guest image) an
earlier release started is served by this runv, every command. The earlier release is
built from this repository's history (a pinned commit, in a virtualenv of its own, with
its own guest image), as a distribution would have installed it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runv.testing.host import run_captured

REPO = Path(__file__).resolve().parents[2]
# The last commit before the shim recorded its protocol: its exec request carries the whole
# process, which a later CLI's ARGS exec broke ("closed the connection during exec").
PREVIOUS = "2d9da31ab2bff17094404dea00a9187effe33071"

pytestmark = pytest.mark.usefixtures("guest_image")


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> list[str]:
    """The earlier release's ``runv`` with its own guest image: the argv prefix to call it."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the earlier release is built from its history")
    where = tmp_path_factory.mktemp("previous")
    tree = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS], capture_output=True)
    assert tree.returncode == 0, f"commit {PREVIOUS} is not in this clone: {tree.stderr.decode()}"
    subprocess.run(["tar", "-x", "-C", str(where)], input=tree.stdout, check=True)
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(where / ".venv")], check=True)
    projects = ["-e", str(where)] + [arg for p in sorted((where / "plugins").glob("*/pyproject.toml"))
                                     for arg in ("-e", str(p.parent))]
    pip = run_captured([str(where / ".venv/bin/pip"), "install", "-q", "--disable-pip-version-check", *projects],
                       timeout=600)
    assert pip.returncode == 0, pip.stderr
    runv = [str(where / ".venv/bin/runv"), "--kernel", str(where / "kernel"), "--initrd", str(where / "initrd.img")]
    built = run_captured([*runv, "guest", "build", "--no-template"], timeout=600)
    assert built.returncode == 0, built.stderr
    return [*runv, "--template", "off"]


def test_a_container_an_earlier_release_started_is_served_by_this_one(previous, runv, root, make_bundle, tmp_path):
    bundle = make_bundle(["sh", "-c", "echo $$ > /tmp/pid; sleep 600"])
    with open(tmp_path / "out", "w") as out:  # the shim keeps its caller's stdio: a file, not a pipe
        created = run_captured([*previous, "--root", str(root), "run", "-d", "--bundle", str(bundle), "old1"],
                               stdout=out, timeout=240)
    assert created.returncode == 0, created.stderr
    record = json.loads((root / "old1/state.json").read_text())
    assert "shim_protocol" not in record  # an earlier release's shim, as started

    state = runv("state", "old1")
    assert state.returncode == 0 and json.loads(state.stdout)["status"] == "running", state.stderr
    assert runv("list", "-q").stdout.split() == ["old1"]
    assert "sleep 600" in runv("ps", "old1").stdout
    ran = runv("exec", "--env", "WHO=new", "old1", "sh", "-c", "echo $WHO; cat /tmp/pid")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["new", "1"]
    (tmp_path / "process.json").write_text(json.dumps({"args": ["echo", "from a file"], "cwd": "/", "env": ["PATH=/bin"]}))
    assert runv("exec", "--process", tmp_path / "process.json", "old1").stdout == "from a file\n"
    assert runv("exec", "old1", "sh", "-c", "exit 3").returncode == 3
    for verb, status in (("pause", "paused"), ("resume", "running")):
        assert runv(verb, "old1").returncode == 0
        assert json.loads(runv("state", "old1").stdout)["status"] == status
    stats = runv("events", "--stats", "old1")
    assert stats.returncode == 0 and json.loads(stats.stdout)["data"]["pids"]["current"] >= 1, stats.stderr
    assert runv("kill", "old1", "KILL").returncode == 0
    deleted = runv("delete", "--force", "old1")
    assert deleted.returncode == 0, deleted.stderr
    assert not (root / "old1").exists()  # and the runv fixture finds nothing left under the root


def test_a_container_joins_the_pod_an_earlier_release_started(previous, runv, root, make_bundle, tmp_path):
    """A pod's VM outlives an upgrade (Kubernetes restarts a pod's containers in their sandbox):
    this runv's member joins the VM an earlier release's sandbox runs, whose shim mounts
    host paths (the member's shim stays in its caller's mount namespace for it)."""
    sandbox = make_bundle(["sleep", "600"], name="sandbox", annotations={"io.kubernetes.cri.container-type": "sandbox"})
    with open(tmp_path / "out", "w") as out:
        created = run_captured([*previous, "--root", str(root), "run", "-d", "--bundle", str(sandbox), "pod"],
                               stdout=out, timeout=240)
    assert created.returncode == 0, created.stderr
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "file").write_text("the volume\n")
    member = make_bundle(["sh", "-c", "cat /marker /data/file"], name="member",
                         annotations={"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod"},
                         mounts=[{"destination": "/data", "type": "bind", "source": str(volume), "options": ["rbind", "ro"]}])
    (member / "rootfs/marker").write_text("the member's rootfs\n")
    ran = runv("run", "--bundle", member, "m1")
    assert (ran.returncode, ran.stdout) == (0, "the member's rootfs\nthe volume\n"), ran.stderr
    deleted = runv("delete", "--force", "pod")
    assert deleted.returncode == 0, deleted.stderr

"""What a distro packager ships: only runv, runv-tcg (with the runv-qemu driver it needs)
and runv-bundle, installed as plain wheels into an environment of their own."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    venv = tmp_path_factory.mktemp("subset") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    sources = [REPO, REPO / "plugins/qemu", REPO / "plugins/tcg", REPO / "plugins/bundle"]
    result = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", *map(str, sources)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin/runv"


def test_only_the_shipped_plugins_are_there(subset):
    rows = json.loads(subprocess.run([str(subset), "plugins", "--json"], capture_output=True, text=True, check=True).stdout)
    assert sorted((r["kind"], r["name"]) for r in rows) == [("hypervisor", "qemu"), ("hypervisor", "tcg"), ("storage", "bundle")]
    assert all(not r.get("error") for r in rows)


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_the_subset_runs_a_container(subset, make_bundle, tmp_path):
    root = tmp_path / "state"
    result = subprocess.run([str(subset), "--root", str(root), "--template", "off", "run", "--bundle",
                             str(make_bundle(["sh", "-c", "echo from-the-subset; uname -r"])), "sub"],
                            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "from-the-subset"
    assert not root.exists() or not list(root.iterdir())

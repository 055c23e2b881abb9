"""What a distro packager ships (the ``subset`` fixture, tests/conftest.py: runv, runv-tcg with
the runv-qemu driver it needs, and runv-bundle as plain wheels) runs a container."""

import subprocess

import pytest


@pytest.mark.usefixtures("guest_image")
def test_the_subset_runs_a_container(subset, make_bundle, tmp_path):
    root = tmp_path / "state"
    result = subprocess.run([str(subset), "--root", str(root), "--template", "off", "run", "--bundle",
                             str(make_bundle(["sh", "-c", "echo from-the-subset; uname -r"])), "sub"],
                            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "from-the-subset"
    assert not root.exists() or not list(root.iterdir())

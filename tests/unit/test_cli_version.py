"""`runv --version` answers in runc's form: clients (Podman's `info`, containerd) read it,
and its commit is the one runv was built from (a wheel records it; a checkout installed in
place is asked)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import runv
from runv.oci.state import OCI_VERSION

RUNV = str(Path(sys.executable).with_name("runv"))
REPO = Path(__file__).resolve().parents[2]


def checkout_commit() -> str:
    """This checkout's HEAD, ``-dirty`` while tracked files differ from it, asked of git here."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()

    return git("rev-parse", "--short=12", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def test_version_is_in_runcs_form():
    runc_form = ("runv version ", "commit: ", "spec: ")
    for flag in ("--version", "-v"):
        result = subprocess.run([RUNV, flag], capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stderr) == (0, "")
        lines = result.stdout.splitlines()
        assert len(lines) >= 3 and all(line.startswith(prefix) for line, prefix in zip(lines, runc_form))
        assert lines[0] == f"runv version {runv.__version__}" and lines[2] == f"spec: {OCI_VERSION}"


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_commit_is_the_checkouts_it_runs_from():
    """The editable install of this checkout (how scripts/install installs it)."""
    shown = subprocess.run([RUNV, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[1]
    assert shown == f"commit: {checkout_commit()}"


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("given", ["", "v1.2.3-4-gabcdef"])
def test_a_wheel_records_the_commit_it_is_built_from(tmp_path, monkeypatch, given):
    """What a distribution installs: the wheel carries ``runv/_commit.py`` (hatch_build.py),
    git's commit of the tree, or ``$RUNV_COMMIT`` as a build from a tarball sets it."""
    monkeypatch.setenv("RUNV_COMMIT", given)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("runv-*.whl")
    recorded = {}
    exec(zipfile.ZipFile(wheel).read("runv/_commit.py"), recorded)
    assert recorded["COMMIT"] == (given or checkout_commit())

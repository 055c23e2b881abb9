"""`runv --version` answers in runc's form: clients (Podman's `info`, containerd) read it."""

import subprocess
import sys
from pathlib import Path

import runv
from runv.oci.state import OCI_VERSION

RUNV = str(Path(sys.executable).with_name("runv"))


def test_version_is_in_runcs_form():
    runc_form = ("runv version ", "commit: ", "spec: ")
    for flag in ("--version", "-v"):
        result = subprocess.run([RUNV, flag], capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stderr) == (0, "")
        lines = result.stdout.splitlines()
        assert len(lines) >= 3 and all(line.startswith(prefix) for line, prefix in zip(lines, runc_form))
        assert lines[0] == f"runv version {runv.__version__}" and lines[2] == f"spec: {OCI_VERSION}"

"""The unit layer needs no QEMU and no guest image: it passes in a child whose mount
namespace hides every QEMU binary (/dev/null bound over each: neither found nor runnable),
/usr/lib/qemu and /var/lib/runv (empty tmpfs over them). Where this test is collected, it is
the unit layer's one run: tests/unit/conftest.py deselects the parent's copies."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent
REPO = UNIT.parents[1]
CHILD = "RUNV_UNIT_CHILD"  # set in the child: never recurse, whatever the markers say


def qemu_binaries() -> list[str]:
    found = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        found.update(os.path.realpath(os.path.join(directory, n)) for n in names if n.startswith("qemu"))
    return sorted(p for p in found if os.path.isfile(p))


@pytest.mark.recursive
@pytest.mark.skipif(os.environ.get(CHILD) == "1", reason="inside the no-QEMU child already")
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare(1)")
def test_the_unit_layer_passes_with_qemu_hidden(tmp_path):
    masks = [f"mount --bind /dev/null {binary}" for binary in qemu_binaries()]
    masks += [f"mount -t tmpfs none {d}" for d in ("/usr/lib/qemu", "/var/lib/runv") if os.path.isdir(d)]
    check = "import shutil, sys; sys.exit(any(shutil.which(n) for n in ('qemu-system-x86_64', 'qemu-img')))"
    script = " && ".join([*masks, f"{sys.executable} -c \"{check}\"",
                          f"exec {sys.executable} -m pytest {UNIT} -m 'not recursive' -q -p no:cacheprovider "
                          f"--basetemp {tmp_path / 'child'}"])
    env = {**os.environ, CHILD: "1"}
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1:] or [result.stderr]
    assert result.returncode == 0, f"{summary}\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    counts = dict((word, int(n)) for n, word in re.findall(r"(\d+) (\w+)", summary[0]))
    assert counts.get("passed", 0) > 50 and not counts.get("failed") and not counts.get("errors"), summary

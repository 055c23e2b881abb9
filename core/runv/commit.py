"""The commit runv was built from, for ``runv --version`` (runc prints its own there): what
a wheel's build recorded (``runv/_commit.py``, written by ``hatch_build.py``), else, for a
checkout installed in place, git's view of it; ``unknown`` without either."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve()
CHECKOUT = HERE.parents[2]  # core/runv/commit.py in a checkout of runv


def commit() -> str:
    try:
        from runv._commit import COMMIT  # type: ignore[import-not-found]
    except ImportError:
        return describe(CHECKOUT) if HERE == CHECKOUT / "core/runv/commit.py" else "unknown"
    return COMMIT


def describe(tree: Path) -> str:
    """The commit of the git checkout at ``tree`` (12 hex digits), ``-dirty`` when its tracked
    files have changes; ``unknown`` when it is not one or git is missing."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        changed = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")

"""The unit layer: seconds, no QEMU, no guest image. Whole containers run on the fake VMM
(:mod:`runv.testing.fakevmm`: the real agent as a host process, the ``fake`` fixture of the
repository's conftest.py); the rest calls the core's functions directly."""

from __future__ import annotations

import os
from pathlib import Path


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

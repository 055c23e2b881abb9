"""The VM layer: every test here needs QEMU (it boots a VM, or runs QEMU's tools such as
qemu-img), so each is marked ``vm`` (scripts/test runs ``-m vm`` for this layer and ``-m "not vm"``,
with QEMU hidden, for the rest). Tests that need no QEMU belong in tests/unit."""

import os
from pathlib import Path

import pytest


def pytest_itemcollected(item):
    """Called for the items under this directory only (a conftest's collection hooks are)."""
    item.add_marker(pytest.mark.vm)


@pytest.fixture
def template_dir(runv) -> Path:
    """The session's template directory (the root conftest's guest_image made template ``test``)."""
    path = os.environ.get("RUNV_TEMPLATE_DIR")
    if not path or not (Path(path) / "test" / "template.json").exists():
        pytest.skip("the session template was not made (RUNV_TEST_TEMPLATES=0?)")
    return Path(path)

"""The VM layer: every test here needs QEMU (it boots a VM, or runs QEMU's tools such as
qemu-img), so each is marked ``vm`` (scripts/test runs ``-m vm`` for this layer and ``-m "not vm"``,
with QEMU hidden, for the rest). Tests that need no QEMU belong in tests/unit."""

import pytest


def pytest_itemcollected(item):
    """Called for the items under this directory only (a conftest's collection hooks are)."""
    item.add_marker(pytest.mark.vm)

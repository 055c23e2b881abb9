"""The example plugin's own tests, written with the helpers runv ships for plugin authors."""

import sys
from pathlib import Path

try:
    import runv_plainfs
except ImportError:  # collected by runv's own test run from a checkout, without installing the example
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import runv_plainfs

from runv.testing import container, hooks_with


def test_attach_storage_shares_the_rootfs_as_plainroot(tmp_path):
    c = container(tmp_path, readonly=True)
    attachment = hooks_with(runv_plainfs).attach_storage(container=c)
    assert attachment.rootfs.source == "plainroot" and attachment.rootfs.fstype == "share"
    assert attachment.rootfs.readonly and attachment.shares[0].path == c.rootfs

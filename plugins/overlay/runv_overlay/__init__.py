"""runv storage plugin ``overlay``: the bundle's rootfs reaches the guest over virtio-9p.

Writes land in the bundle's rootfs, as with runc; ``root.readonly`` makes the share and
the guest mount read-only. (9p needs no extra host process, unlike virtio-fs; see
docs/storage.md for the measurements behind the choice.)
"""

from runv import hookimpl
from runv.sandbox.vmspec import GuestMount, Share, StorageAttachment

TAG = "rootfs"
OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"


@hookimpl
def attach_storage(container):
    readonly = container.spec.root.readonly
    return StorageAttachment(
        rootfs=GuestMount(source=TAG, fstype="9p", options=OPTIONS, readonly=readonly),
        shares=(Share(tag=TAG, path=container.rootfs, readonly=readonly),),
    )


@hookimpl
def detach_storage(container, attachment):
    """Nothing to undo: the share lives and dies with the VM."""

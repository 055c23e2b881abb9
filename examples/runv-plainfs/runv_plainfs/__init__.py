"""Example runv storage plugin ``plainfs``: shares the bundle's rootfs into the VM over
virtio-9p under the tag ``plainroot`` (runv's own ``overlay`` plugin uses ``rootfs``).

Select it with ``runv --storage plainfs ...``. It implements three hooks:

- ``probe``: can it run here? (9p needs nothing on the host, so only a sanity check.)
- ``attach_storage``: the share to add to the VM and how the guest agent mounts it.
- ``detach_storage``: undo (nothing: the share lives and dies with the VM).
"""

from runv import hookimpl
from runv.sandbox.vmspec import GuestMount, Share, StorageAttachment

TAG = "plainroot"
OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"


@hookimpl
def probe():
    return None


@hookimpl
def attach_storage(container):
    readonly = container.spec.root.readonly
    return StorageAttachment(
        rootfs=GuestMount(source=TAG, fstype="9p", options=OPTIONS, readonly=readonly),
        shares=(Share(tag=TAG, path=container.rootfs, readonly=readonly),),
        data={"plugin": "plainfs"},
    )


@hookimpl
def detach_storage(container, attachment):
    """Nothing to undo."""

"""Example runv storage plugin ``plainfs``: shares the bundle's rootfs into the VM under the
tag ``plainroot`` (runv's own ``bundle`` plugin uses ``rootfs``), over whatever shared
filesystem the hypervisor serves (virtio-9p with QEMU).

Select it with ``runv --storage plainfs ...``. It implements two hooks:

- ``attach_storage``: the share to add to the VM and how the guest agent mounts it.
- ``detach_storage``: undo (nothing: the share lives and dies with the VM).

It has no ``probe``: a share needs nothing on the host, and a plugin without one is usable.
"""

from runv.api import GuestMount, Share, StorageAttachment, hookimpl

TAG = "plainroot"


@hookimpl
def attach_storage(container):
    readonly = container.spec.root.readonly
    return StorageAttachment(
        rootfs=GuestMount.of_share(TAG, readonly=readonly),
        shares=(Share(tag=TAG, path=container.rootfs, readonly=readonly),),
        data={"plugin": "plainfs"},
    )


@hookimpl
def detach_storage(container, attachment):
    """Nothing to undo."""

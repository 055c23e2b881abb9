"""runv storage plugin ``overlay``: the bundle's rootfs for the guest, in one of three modes.

``share`` (the default): the rootfs shared with the guest (over virtio-9p with QEMU: the
hypervisor's shared filesystem); writes land in the bundle, as with runc.

``overlay`` (``io.runv.storage.overlay=true`` or ``io.runv.storage.mode=overlay``, or
``mode = "overlay"`` under ``[storage]`` in runv's config file): the bundle stays pristine.
The rootfs is shared read-only as the lower layer; the upper layer is a sparse ext4
file in the container's state directory (``upper.img``), attached as virtio-blk with serial
``upper``; the guest assembles the overlay. Many containers can share one bundle. The upper
file is removed when the container's VM is gone (``detach_storage``) and with its state.

``block`` (``io.runv.storage.mode=block``): the rootfs becomes an ext4 image once, cached
by content under ``[storage] cache_dir``; each container gets a qcow2 overlay backed by it in
its state directory (``rootfs.qcow2``), attached as virtio-blk with serial ``rootfs``. File
access is local ext4 in the guest (several times faster than 9p for file-heavy work).

``root.readonly`` makes every mode read-only (no upper, no overlay file: the share or the
base image itself, read-only). See docs/storage.md for the measurements behind the choices.
"""

from pathlib import Path

from runv.api import Disk, GuestMount, RunvError, Share, StorageAttachment, hookimpl

TAG = "rootfs"
LOWER = "/run/runv/lower"
UPPER = "/run/runv/upper"
UPPER_SERIAL = "upper"
ROOT_SERIAL = "rootfs"


@hookimpl
def probe():
    """The share mode needs nothing beyond QEMU; overlay and block need e2fsprogs and
    qemu-img: unusable only when the configured default mode needs what is missing."""
    from runv.api.images import MKFS, QEMU_IMG, missing_tools
    from runv.api.storage import settings

    missing = missing_tools(MKFS, QEMU_IMG)
    mode = settings()["mode"]
    if missing and mode != "share":
        return f"storage mode {mode!r} (runv config) needs {missing}"
    return None


def _state_dir(container) -> Path:
    """The container's state directory as an absolute path (the shim runs inside it)."""
    path = container.state_dir
    if path.is_absolute():
        return path
    return path.resolve() if path.is_dir() else Path.cwd()


@hookimpl
def attach_storage(container):
    from runv.api.storage import settings

    readonly = container.spec.root.readonly
    options = settings(container.annotations)
    mode = options["mode"]
    if mode == "block":
        return _block(container, options, readonly)
    if mode == "overlay" and not readonly:
        return _overlay(container, options)
    return StorageAttachment(
        rootfs=GuestMount.of_share(TAG, readonly=readonly),
        shares=(Share(tag=TAG, path=container.rootfs, readonly=readonly),),
        data={"mode": "share" if mode == "share" else mode},
    )


def _overlay(container, options) -> StorageAttachment:
    from runv.api.images import empty_ext4

    upper = empty_ext4(_state_dir(container) / "upper.img", options["upper_size"], "runv-upper")
    layers = f"lowerdir={LOWER},upperdir={UPPER}/upper,workdir={UPPER}/work"
    return StorageAttachment(
        rootfs=GuestMount(source="overlay", fstype="overlay", options=layers),
        shares=(Share(tag=TAG, path=container.rootfs, readonly=True),),
        disks=(Disk(serial=UPPER_SERIAL, path=upper, format="raw"),),
        mounts=(
            GuestMount.of_share(TAG, readonly=True, target=LOWER),
            GuestMount.of_disk(UPPER_SERIAL, "ext4", target=UPPER),
        ),
        data={"mode": "overlay", "files": [str(upper)]},
    )


def _block(container, options, readonly: bool) -> StorageAttachment:
    from runv.api.images import base_image, overlay_qcow2

    base = base_image(container.rootfs, options["cache_dir"], options["base_size"])
    if readonly:
        disk = Disk(serial=ROOT_SERIAL, path=base, format="raw", readonly=True)
        files = []
    else:
        qcow2 = overlay_qcow2(base, _state_dir(container) / "rootfs.qcow2")
        disk = Disk(serial=ROOT_SERIAL, path=qcow2, format="qcow2")
        files = [str(qcow2)]
    return StorageAttachment(
        rootfs=GuestMount.of_disk(ROOT_SERIAL, "ext4", readonly=readonly),
        disks=(disk,),
        data={"mode": "block", "base": str(base), "files": files},
    )


@hookimpl
def detach_storage(container, attachment):
    """Removes the container's own files (upper layer, qcow2 overlay); never the base."""
    for name in attachment.data.get("files", []):
        path = Path(name)
        if path.name in ("upper.img", "rootfs.qcow2"):  # only what attach_storage made
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise RunvError(f"cannot remove {path}: {exc.strerror}") from None

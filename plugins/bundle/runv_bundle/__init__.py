"""runv storage plugin ``bundle`` (the default): the bundle's rootfs for the guest, in one of
three modes (``[storage] mode`` in runv's config file, or per container ``io.runv.storage.mode``).

``share`` (the default): the rootfs shared with the guest (over virtio-9p with QEMU: the
hypervisor's shared filesystem); writes land in the bundle, as with runc.

``overlay`` (``io.runv.storage.overlay=true`` or ``io.runv.storage.mode=overlay``, or
``mode = "overlay"`` under ``[storage]`` in runv's config file): the bundle stays pristine.
The rootfs is shared read-only as the lower layer; the upper layer is a sparse ext4
file (``upper.img``, ``upper_size``) in the container's own directory on disk
(``[storage] containers_dir/<id>-<hash>/``: :func:`runv.api.storage.container_dir`), attached
as virtio-blk with serial ``upper``; the guest assembles the overlay. Many containers can
share one bundle. The directory is removed when the container's VM is gone (``detach_storage``).

``block`` (``io.runv.storage.mode=block``): the rootfs becomes an ext4 image once, cached
by content under ``[storage] cache_dir``; each container gets a qcow2 overlay backed by it in
its own directory (``rootfs.qcow2``), attached as virtio-blk with serial ``rootfs``. File
access is local ext4 in the guest (several times faster than 9p for file-heavy work).

``root.readonly`` makes every mode read-only (no upper, no overlay file: the share or the
base image itself, read-only). Sizes are checked against ``max_upper_size`` /
``max_base_size`` (:func:`runv.api.storage.settings`). See docs/storage.md for the
measurements behind the choices. (The plugin was called ``overlay`` before runv 0.2;
records and ``--storage`` still take that name: :data:`runv.loader.RENAMED`.)
"""

import shutil

from runv.api import Disk, GuestModules, GuestMount, RunvError, Share, StorageAttachment, hookimpl

MODES = ("share", "overlay", "block")
DEFAULT_MODE = "share"

TAG = "rootfs"
LOWER = "/run/runv/lower"
UPPER = "/run/runv/upper"
UPPER_SERIAL = "upper"
ROOT_SERIAL = "rootfs"


@hookimpl
def guest_modules():
    """ext4 (the overlay's upper layer, block mode's image) and overlayfs, loaded when first
    mounted; crc32c_generic at boot: ext4 asks for crc32c through the crypto API, so no module
    lists it as a dependency, and TCG's default CPU lacks the SSE4.2 crc32c_intel needs."""
    return GuestModules(at_boot=("crc32c_generic",), on_demand=("ext4", "overlay"))


@hookimpl
def probe():
    """The share mode needs nothing beyond QEMU; overlay and block need e2fsprogs and
    qemu-img: unusable only when the configured default mode needs what is missing."""
    from runv.api.images import MKFS, QEMU_IMG, missing_tools

    missing = missing_tools(MKFS, QEMU_IMG)
    mode = options_for({})["mode"]
    if missing and mode != "share":
        return f"storage mode {mode!r} (runv config) needs {missing}"
    return None


def options_for(annotations: dict[str, str]) -> dict:
    """The storage settings of a container with these annotations (:func:`runv.api.storage.settings`),
    its ``mode`` one of MODES."""
    from runv.api.storage import settings

    options = settings(annotations)
    mode = options["mode"] or DEFAULT_MODE
    if mode not in MODES:
        raise RunvError(f"{options['sources']['mode']}: storage mode {mode!r} is not one of {', '.join(MODES)}")
    return {**options, "mode": mode}


@hookimpl
def attach_storage(container):
    readonly = container.spec.root.readonly
    options = options_for(container.annotations)
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

    directory, upper = _in_own_directory(container, options,
                                         lambda d: empty_ext4(d / "upper.img", options["upper_size"], "runv-upper"))
    layers = f"lowerdir={LOWER},upperdir={UPPER}/upper,workdir={UPPER}/work"
    return StorageAttachment(
        rootfs=GuestMount(source="overlay", fstype="overlay", options=layers),
        shares=(Share(tag=TAG, path=container.rootfs, readonly=True),),
        disks=(Disk(serial=UPPER_SERIAL, path=upper, format="raw"),),
        mounts=(
            GuestMount.of_share(TAG, readonly=True, target=LOWER),
            GuestMount.of_disk(UPPER_SERIAL, "ext4", target=UPPER),
        ),
        data={"mode": "overlay", "dir": str(directory)},
    )


def _block(container, options, readonly: bool) -> StorageAttachment:
    from runv.api.images import base_image, overlay_qcow2

    base = base_image(container.rootfs, options["cache_dir"], options["base_size"])
    data = {"mode": "block", "base": str(base)}
    if readonly:
        disk = Disk(serial=ROOT_SERIAL, path=base, format="raw", readonly=True)
    else:
        directory, qcow2 = _in_own_directory(container, options, lambda d: overlay_qcow2(base, d / "rootfs.qcow2"))
        disk = Disk(serial=ROOT_SERIAL, path=qcow2, format="qcow2")
        data["dir"] = str(directory)
    return StorageAttachment(
        rootfs=GuestMount.of_disk(ROOT_SERIAL, "ext4", readonly=readonly),
        disks=(disk,),
        data=data,
    )


def _in_own_directory(container, options, make):
    """(directory, ``make(directory)``) in a fresh :func:`runv.api.storage.container_dir`;
    when ``make`` fails the directory goes too (a failed create leaves nothing)."""
    from runv.api.storage import container_dir

    directory = container_dir(container, options)
    try:
        return directory, make(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


@hookimpl
def detach_storage(container, attachment):
    """Removes the container's own directory (upper layer, qcow2 overlay); never the base."""
    from runv.api.storage import remove_container_dir

    if "dir" in attachment.data:
        remove_container_dir(container, attachment.data["dir"])

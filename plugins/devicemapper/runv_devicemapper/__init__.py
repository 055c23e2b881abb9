"""runv storage plugin ``devicemapper``: each container's rootfs is a thin snapshot.

A device-mapper thin pool (on block devices named in the config, or on loop-backed sparse
files under the pool directory) holds one base thin volume per rootfs content, built once
from the cached ext4 image of the bundle's rootfs (:func:`runv.api.images.base_image`);
each container gets a thin snapshot of it, activated with ``dmsetup`` as
``/dev/mapper/runv-<id>`` and attached to the VM as virtio-blk with serial ``rootfs``; the
agent mounts it by that serial. ``delete`` removes the snapshot; the pool and the bases stay
for reuse. Every pool change runs under a lock (see :mod:`runv_devicemapper.thin`).

Config (``[storage]`` in /etc/runv/config.toml)::

    dm_pool = "runv-pool"                      # the pool's dm name
    dm_dir = "/var/lib/runv/devicemapper"      # sparse files, registry, lock
    dm_data_size = "20G"                       # sparse data file (when no device is given)
    dm_metadata_size = "256M"
    dm_data_device = "/dev/sdX"                # optional: real block devices instead
    dm_metadata_device = "/dev/sdY"

These come from the config file only (no annotation sets them); a container's annotations
choose at most ``io.runv.storage.base-size``, capped by ``max_base_size``
(:func:`runv.api.storage.settings`). A snapshot is a device in the pool, so a container has
no files of its own on the host.

Select it with ``runv --storage devicemapper``. Needs a kernel with device-mapper and the
thin-pool target, ``dmsetup`` (package dmsetup) and ``losetup`` (util-linux); ``runv
check`` says which is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runv.api import Disk, GuestModules, GuestMount, RunvError, StorageAttachment, hookimpl

SERIAL = "rootfs"
# where the kernel says whether it has a device-mapper (tests point these elsewhere)
KERNEL = {"devices": "/proc/devices", "module": "/sys/module/dm_mod", "control": "/dev/mapper/control"}
DEFAULTS = {"dm_pool": "runv-pool", "dm_dir": "/var/lib/runv/devicemapper", "dm_data_size": "20G",
            "dm_metadata_size": "256M", "dm_data_device": None, "dm_metadata_device": None}


def kernel_has_device_mapper() -> str | None:
    """Why this kernel cannot run thin pools, or None (it reads the files KERNEL names)."""
    try:
        devices = Path(KERNEL["devices"]).read_text()
    except OSError:
        devices = ""
    if "device-mapper" not in devices and not Path(KERNEL["module"]).exists():
        return ("this host's kernel has no device-mapper (no dm_mod: /proc/devices lists no device-mapper; "
                "`modprobe dm_thin_pool` on a kernel that has it)")
    if not Path(KERNEL["control"]).exists():
        return "/dev/mapper/control is missing: load dm_mod (`modprobe dm_mod`) or mount devtmpfs"
    return None


@hookimpl
def guest_modules():
    """ext4 on the snapshots (crc32c_generic at boot: see runv_bundle), and the guest's own
    device-mapper: dm_mod at boot, as dmsetup opens /dev/mapper/control, which exists only once
    it is loaded; loop for loop-backed pools (this plugin's tests run its host side in a guest)."""
    return GuestModules(at_boot=("crc32c_generic", "dm_mod", "loop"), on_demand=("ext4", "dm_thin_pool"))


@hookimpl
def probe():
    missing = [f"{tool} ({hint})" for tool, hint in (("dmsetup", "apt-get install dmsetup"),
                                                     ("losetup", "apt-get install util-linux"),
                                                     ("mkfs.ext4", "apt-get install e2fsprogs"))
               if shutil.which(tool) is None]
    reason = kernel_has_device_mapper()
    if reason and missing:
        return f"{reason}; also missing: {', '.join(missing)}"
    return reason or (f"missing: {', '.join(missing)}" if missing else None)


def pool_from_settings(options: dict):
    from runv.api.storage import parse_size
    from runv_devicemapper.thin import Pool

    cfg = {**DEFAULTS, **{k: v for k, v in options.items() if k.startswith("dm_")}}
    return Pool(
        cfg["dm_pool"], Path(cfg["dm_dir"]),
        data_size=parse_size(cfg["dm_data_size"], "dm_data_size"),
        metadata_size=parse_size(cfg["dm_metadata_size"], "dm_metadata_size"),
        data_device=cfg["dm_data_device"], metadata_device=cfg["dm_metadata_device"],
    )


def snapshot_name(container) -> str:
    """A container's dm device: ``runv-ct-<id>-<hash>`` (:func:`runv.api.storage.container_key`:
    two roots' containers of one id never share it), a namespace of its own (the pool is
    ``runv-pool``, its bases ``runv-pool-base-*``), so no id names another device of runv's"""
    from runv.api.storage import container_key

    return f"runv-ct-{container_key(container)}"


@hookimpl
def attach_storage(container):
    from runv.api.images import base_image
    from runv.api.storage import absolute_state_dir, settings

    reason = kernel_has_device_mapper()
    if reason:
        raise RunvError(f"storage devicemapper cannot run here: {reason}")
    options = settings(container.annotations)
    pool = pool_from_settings(options)
    image = base_image(container.rootfs, options["cache_dir"], options["base_size"])
    key = image.name.removeprefix("base-").removesuffix(".ext4")
    pool.base(key, image)
    readonly = container.spec.root.readonly
    name = snapshot_name(container)
    device = pool.snapshot(name, key, owner=str(absolute_state_dir(container)))
    return StorageAttachment(
        rootfs=GuestMount.of_disk(SERIAL, "ext4", readonly=readonly),
        disks=(Disk(serial=SERIAL, path=Path(device), format="raw", readonly=readonly),),
        data={"pool": pool.name, "dir": str(pool.directory), "snapshot": name, "base": key},
    )


@hookimpl
def detach_storage(container, attachment):
    """Removes the container's snapshot (converges: nothing to do when it is gone)."""
    from runv_devicemapper.thin import Pool

    data = attachment.data
    if "snapshot" not in data or kernel_has_device_mapper():
        return
    Pool(data["pool"], Path(data["dir"])).remove_snapshot(data["snapshot"])


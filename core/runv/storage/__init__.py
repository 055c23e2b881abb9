"""Storage helpers shared by the storage plugins and the shim.

* :mod:`runv.storage.images`: ext4 base images of a rootfs, built once and cached by content,
  per-container qcow2 overlays and empty upper-layer disks.
* :mod:`runv.storage.volumes`: the spec's ``mounts`` as extra shares and the agent's mount plan.
* :mod:`runv.storage.config`: the ``[storage]`` table of runv's config file and the annotations.

See docs/storage.md.
"""

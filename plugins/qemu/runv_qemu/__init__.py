"""runv's QEMU support: the ``qemu`` (KVM) hypervisor plugin (``plugin``), the hooks both
QEMU plugins share (``hypervisor``), the QEMU driver and its VM (``driver``: command line,
start, QMP control) and templates (``template``); the ``tcg`` plugin reuses all of it."""

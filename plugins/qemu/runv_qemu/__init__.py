"""runv's QEMU support: the ``qemu`` (KVM) hypervisor plugin (``plugin``), the shared QEMU
driver (``driver``: command line, start, QMP control, teardown; the ``tcg`` plugin uses it
too) and the KVM usability probe (``kvm``)."""

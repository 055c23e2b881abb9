"""The guest image: the kernel and initrd every runv VM boots (built by ``runv.guest.builder``)."""

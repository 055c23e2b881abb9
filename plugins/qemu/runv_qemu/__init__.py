"""runv's QEMU driver: command line, start, QMP control and teardown (see ``driver``)."""

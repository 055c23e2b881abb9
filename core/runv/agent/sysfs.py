"""Waiting for a device to show up: its sysfs entry with an attribute, then its /dev node
(there is no udev in the guest; the virtio-serial port and hot-plugged disks both need it)."""

import os
import time

POLL = 0.05  # seconds between looks


def wait_for_device(base: str, attribute: str, value: str, timeout: float, dev: str = "/dev") -> str | None:
    """``dev/NAME`` for the first ``base/NAME`` whose ``attribute`` file reads ``value``
    once that node exists, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(os.listdir(base)) if os.path.isdir(base) else []
        for name in names:
            try:
                with open(f"{base}/{name}/{attribute}") as f:
                    found = f.read().strip() == value
            except OSError:
                continue
            if found and os.path.exists(f"{dev}/{name}"):
                return f"{dev}/{name}"
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)

"""Waiting for a device to show up: its sysfs entry with an attribute, then its /dev node
(there is no udev in the guest; the virtio-serial port and hot-plugged disks both need it)."""

import os
import time

from runv.agent.errors import RequestError

POLL = 0.05  # seconds between looks
CPU_TIMEOUT = 5.0  # seconds for hot-plugged vCPUs to show up in the guest


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


CPUS = "/sys/devices/system/cpu"


def online_cpus(count: int, timeout: float) -> int:
    """Brings hot-plugged vCPUs online (no udev does it here) until ``count`` are, or
    ``timeout`` seconds pass; returns how many are online."""
    deadline = time.monotonic() + timeout
    while True:
        online = 0
        for name in sorted(os.listdir(CPUS)):
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            path = f"{CPUS}/{name}/online"
            try:
                with open(path) as f:
                    up = f.read().strip() != "0"
                if not up and online < count:
                    with open(path, "w") as f:
                        f.write("1")
                    up = True
            except FileNotFoundError:
                up = name == "cpu0"  # the boot CPU has no online file
            except OSError:
                up = False
            online += up
        if online >= count or time.monotonic() > deadline:
            return online
        time.sleep(POLL)


def require_online(count, request: str) -> None:
    """Brings ``count`` vCPUs online (the host hot-plugged them first) or raises RequestError
    saying how many came, for ``request``."""
    if type(count) is not int or count < 1:
        raise RequestError(f"{request}: vcpus must be a positive integer, not {count!r}")
    online = online_cpus(count, CPU_TIMEOUT)
    if online < count:
        raise RequestError(f"{request}: only {online} of {count} vCPUs came online in the guest")

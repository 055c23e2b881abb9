"""Who the agent is (ping) and making a VM restored from a template its own (clone: clock, RNG, vCPUs)."""

import fcntl
import os
import struct
import time

from runv.agent.debug import log
from runv.agent.protocol import VERSION

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2]): add entropy and credit it
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the CRNG from the pool now


def identity() -> dict:
    """What ``ready``, ``ping`` and ``clone`` say about the agent: its pid, the kernel's
    release, the protocol version it speaks."""
    return {"pid": os.getpid(), "kernel": os.uname().release, "protocol": VERSION}


def op_ping(agent, message: dict) -> dict:
    return identity()


def op_clone(agent, message: dict) -> dict:
    """Makes a VM restored from a template its own: sets the wall clock to the host's,
    and mixes the host's fresh random bytes into the kernel's pool (credited with
    RNDADDENTROPY; a plain /dev/urandom write when refused) and reseeds the CRNG at
    once (RNDRESEEDCRNG), so no two clones of one template share random numbers; with
    ``vcpus``, brings that many vCPUs online (the host grew a clone of a smaller template)."""
    if message.get("time"):
        time.clock_settime(time.CLOCK_REALTIME, float(message["time"]))
    seed = bytes.fromhex(message.get("seed", ""))
    if seed:
        fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
        try:
            try:
                fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
            except OSError:
                os.write(fd, seed)
            try:
                fcntl.ioctl(fd, RNDRESEEDCRNG)
            except OSError as exc:
                log(f"CRNG not reseeded: {exc}")
        finally:
            os.close(fd)
    if message.get("vcpus") is not None:
        from runv.agent.sysfs import require_online

        require_online(message["vcpus"], "clone")
    return identity()

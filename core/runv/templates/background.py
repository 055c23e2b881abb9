"""A template made in the background for a VM that had none: the container that found no
template of its shape (or a smaller one to grow from) boots cold once, its shim asks for
this maker and its ``create`` starts it, so the next container of that size starts from a
template (the shim's processes die with it: runv.vm.pidns).

The maker is a process of its own (``python -m runv.templates.background``, which forks
and lets its parent exit, so the maker is no descendant of ``create``), in a new session,
in the root cgroup of every hierarchy rather than the container's (the caller's limits
and accounting are for the container, not for what runv keeps for later), at the lowest
CPU and I/O priorities (``SCHED_IDLE``, ``IOPRIO_CLASS_IDLE``, inherited by its QEMU). One
maker at a time (a lock in the template directory); none once the directory holds
``MAX_TEMPLATES`` current templates; none with ``[templates] background = false`` in
runv's config file. What it did, or why not, goes to ``background.log`` in the template
directory, never to the container or its caller's log."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runv.api.errors import RunvError

if TYPE_CHECKING:
    from runv.api.vm import VMSpec
    from runv.loader import Hypervisor
    from runv.settings import Settings

LOCK = ".background.lock"  # in the template directory, held by the running maker
LOG = "background.log"  # in the template directory: what the makers did and why not
SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, IOPRIO_CLASS_IDLE, IOPRIO_CLASS_SHIFT = 251, 1, 3, 13  # x86_64, <linux/ioprio.h>
_libc = ctypes.CDLL(None, use_errno=True)
MAX_TEMPLATES = 8  # a maker adds none beyond this many (each holds a guest's memory on disk)
REQUEST = "template-request.json"  # in a container's state directory: the maker its shim asks for


def enabled() -> bool:
    """``[templates] background`` in runv's config file (default true)."""
    from runv.api.config import config_path, section

    value = section("templates").get("background", True)
    if not isinstance(value, bool):
        raise RunvError(f"{config_path()}: [templates] background must be true or false, not {value!r}")
    return value


def after_cold_boot(settings: Settings, hypervisor: Hypervisor, vm: VMSpec, state_dir: Path) -> None:
    """Asks for a maker after ``vm`` booted cold under ``--template auto``, when a template
    could serve it (no disks, no kernel arguments of a plugin's or of --debug: what ``runv
    template create`` makes) and one may be made now: the request goes to the container's
    state directory, and ``create`` starts the maker (:func:`start_requested`), for the shim
    is the init of a PID namespace whose processes die with it. A failure is logged, never
    raised: the container booted."""
    from runv.log import logger
    from runv.templates import store
    from runv.templates.match import AUTO
    from runv.vm.bringup import kernel_args

    if (settings.template != AUTO or hypervisor.info.templates is None or vm.disks
            or vm.kernel_args != kernel_args(False, hypervisor.info.capabilities)):
        return
    try:
        if enabled() and room(store.directory(), settings) and not busy(store.directory()):
            request = {"kernel": settings.kernel, "initrd": settings.initrd, "hypervisor": settings.hypervisor,
                       "memory_mib": vm.memory_mib, "vcpus": vm.vcpus, "hotplug_slots": vm.hotplug_slots}
            (state_dir / REQUEST).write_text(json.dumps(request))
    except (RunvError, OSError) as exc:
        logger.warning("container %s: no template made in the background: %s", vm.name, exc)


def start_requested(state_dir: Path) -> None:
    """Starts the maker the shim asked for in ``state_dir``, if it did (:func:`after_cold_boot`);
    a failure is logged, never raised."""
    from runv.log import logger

    try:
        request = json.loads((state_dir / REQUEST).read_text())
        (state_dir / REQUEST).unlink()
        start(request)
    except FileNotFoundError:
        pass
    except (ValueError, OSError, subprocess.SubprocessError) as exc:
        logger.warning("container %s: no template made in the background: %s", state_dir.name, exc)


def room(base: Path, settings: Settings) -> bool:
    """Whether ``base`` holds fewer than MAX_TEMPLATES templates a container could still
    start from (stale ones, made from another guest image, do not count)."""
    from runv.templates import match, store

    current = match.source(settings.kernel, settings.initrd)
    return sum(match.stale_reason(record, current) is None for record in store.all_records()) < MAX_TEMPLATES


def busy(base: Path) -> bool:
    """Whether a maker holds ``base``'s lock now."""
    from runv.templates import store

    try:
        return store.held(base / LOCK)
    except FileNotFoundError:
        return False


def start(request: dict) -> None:
    """Starts a maker of the template ``request`` names (its own process, not waited for)."""
    from runv.templates import store

    # its first process forks the maker and exits at once: the maker is no child of this
    # process, a session and a process group of its own
    subprocess.run([sys.executable, "-m", "runv.templates.background", json.dumps(request)], start_new_session=True, cwd="/",
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                   env={**os.environ, store.DIR_ENV: str(store.directory())})


def main(request: dict) -> int:
    """The maker: out of the container's cgroups, idle priority, the lock, then the template
    (unless the directory is full, or a current one of that shape exists by now). Everything
    it does or fails to do goes to ``background.log`` in the template directory."""
    from runv import log
    from runv.settings import Settings
    from runv.templates import make, store
    from runv.vm import cgroupspath

    base = store.directory()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings = Settings(kernel=request["kernel"], initrd=request["initrd"], hypervisor=request["hypervisor"],
                        log=base / LOG)
    log.setup(settings, stderr=False)
    fd = -1
    try:
        try:
            cgroupspath.to_root(os.getpid())  # what runv keeps for later is not charged to the container's caller
        except RunvError as exc:  # a cgroup namespace's root may refuse processes: the caller pays, the template is made
            log.logger.warning("the background template maker stays in the container's cgroups: %s", exc)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # its VMM inherits both
        _libc.syscall(SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT)
        fd = os.open(base / LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another maker runs: a later cold boot asks again
        if not room(base, settings):
            log.logger.info("no background template: %s holds %d current templates already", base, MAX_TEMPLATES)
            return 0
        record = make.create(settings, memory_mib=request["memory_mib"], vcpus=request["vcpus"],
                             hotplug_slots=request["hotplug_slots"], unless_current=True)
        if record is not None:
            log.logger.info("template %s made in the background in %.1f s", record["name"], record["seconds"])
        return 0
    except Exception as exc:  # noqa: BLE001 - nobody waits for this process: its log is the only witness
        log.logger.error("background template of %s MiB and %s vCPUs not made: %s", request.get("memory_mib"),
                         request.get("vcpus"), exc)
        return 1
    finally:
        if fd >= 0:
            os.close(fd)


if __name__ == "__main__":
    if os.fork():  # the parent (start's child) returns at once; the maker goes on, adopted by init
        os._exit(0)
    sys.exit(main(json.loads(sys.argv[1])))

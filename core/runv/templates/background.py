"""A template made in the background for a VM that had none: the container that found no
template of its shape (or a smaller one to grow from) boots cold once, and its shim starts
this maker so the next container of that size starts from a template.

The maker is a process of its own (``python -m runv.templates.background``, which forks
and lets its parent exit, so the maker is no descendant of the shim), in a new session,
at the lowest CPU priority (``SCHED_IDLE``, inherited by its QEMU), in the host's root
cgroups rather than the container's (the caller's limits and accounting are for the
container, not for what runv keeps for later). One maker at a time (a lock in the
template directory); none once the directory holds ``MAX_TEMPLATES`` templates; none
with ``[templates] background = false`` in runv's config file. Its failures go to runv's
log (``--log``), never to the container."""

from __future__ import annotations

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
MAX_TEMPLATES = 8  # a maker adds none beyond this many (each holds a guest's memory on disk)


def enabled() -> bool:
    """``[templates] background`` in runv's config file (default true)."""
    from runv.api.config import config_path, section

    value = section("templates").get("background", True)
    if not isinstance(value, bool):
        raise RunvError(f"{config_path()}: [templates] background must be true or false, not {value!r}")
    return value


def after_cold_boot(settings: Settings, hypervisor: Hypervisor, vm: VMSpec) -> None:
    """Starts a maker after ``vm`` booted cold under ``--template auto``, when a template
    could serve it (no disks, no kernel arguments of a plugin's or of --debug: what ``runv
    template create`` makes); a failure to start one is logged, not raised."""
    from runv.log import logger
    from runv.shim.bringup import kernel_args
    from runv.templates.match import AUTO

    if (settings.template != AUTO or hypervisor.info.templates is None or vm.disks
            or vm.kernel_args != kernel_args(False, hypervisor.info.capabilities)):
        return
    try:
        if enabled():
            start(settings, vm)
    except (RunvError, OSError) as exc:
        logger.warning("container %s: no template made in the background: %s", vm.name, exc)


def start(settings: Settings, vm: VMSpec) -> None:
    """Starts a maker of a template of ``vm``'s size (its own process, not waited for)."""
    from runv.templates import store

    request = {"kernel": str(settings.kernel), "initrd": str(settings.initrd), "hypervisor": settings.hypervisor,
               "log": str(settings.log) if settings.log else None, "log_format": settings.log_format,
               "memory_mib": vm.memory_mib, "vcpus": vm.vcpus, "hotplug_slots": vm.hotplug_slots}
    # its first process forks the maker and exits at once: the maker is no child of the shim,
    # whose process tree `delete --force` kills (runv.runtime.proctree)
    subprocess.run([sys.executable, "-m", "runv.templates.background", json.dumps(request)], start_new_session=True, cwd="/",
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                   env={**os.environ, store.DIR_ENV: str(store.directory())})


def main(request: dict) -> int:
    """The maker: idle priority, the root cgroup, the lock, then the template (unless the
    directory is full, or a current one of that shape exists by now)."""
    from runv import log
    from runv.api import cgroups
    from runv.settings import Settings
    from runv.templates import make, store

    settings = Settings(kernel=Path(request["kernel"]), initrd=Path(request["initrd"]), hypervisor=request["hypervisor"],
                        log=Path(request["log"]) if request["log"] else None, log_format=request["log_format"])
    log.setup(settings, stderr=False)
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    cgroups.to_root(os.getpid())
    base = store.directory()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(base / LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another maker runs: a later cold boot asks again
    try:
        if len(store.all_records()) >= MAX_TEMPLATES:
            log.logger.info("no background template: %s holds %d templates already", base, MAX_TEMPLATES)
            return 0
        record = make.create(settings, memory_mib=request["memory_mib"], vcpus=request["vcpus"],
                             hotplug_slots=request["hotplug_slots"], unless_current=True)
        if record is not None:
            log.logger.info("template %s made in the background in %.1f s", record["name"], record["seconds"])
        return 0
    except (RunvError, OSError) as exc:
        log.logger.error("background template of %d MiB and %d vCPUs not made: %s", request["memory_mib"], request["vcpus"], exc)
        return 1
    finally:
        os.close(fd)


if __name__ == "__main__":
    if os.fork():  # the parent (start's child) returns at once; the maker goes on, adopted by init
        os._exit(0)
    sys.exit(main(json.loads(sys.argv[1])))

"""Making a template: boot a VM of a given shape to agent-ready and save it (``runv template create``)."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runv.api.errors import RunvError
from runv.log import logger
from runv.templates import match
from runv.templates.store import MAKING, OLD, RECORD, check_name, directory, lock, read

if TYPE_CHECKING:
    from runv.api.vm import VMSpec
    from runv.settings import Settings

DEFAULT_HOTPLUG_SLOTS = 2  # what the net plugin keeps free in every VM
LEFTOVERS = ("agent.sock", "qmp.sock", "console.log")  # run-time files of the template VM, not part of it


def create(
    settings: Settings,
    *,
    name: str | None = None,
    memory_mib: int | None = None,
    vcpus: int | None = None,
    hotplug_slots: int = DEFAULT_HOTPLUG_SLOTS,
    private: bool = True,
    unless_current: bool = False,
) -> dict | None:
    """Boots a VM of this shape to agent-ready, saves it as a template; returns its record.
    Memory and vCPUs default to ``[vm]``'s (the size of a container without limits);
    ``private``: clones share no memory page (see TemplateSupport.boot).
    ``unless_current``: when the template of that name already has this shape and is made
    from the current kernel and initrd, with its files intact, boot nothing and return None."""
    from runv import loader
    from runv.vm import sizing
    from runv.vm.bringup import base_vm, connect_agent

    settings.check_guest()

    config = sizing.settings()  # the defaults here, the hot-plug ceilings in base_vm
    memory_mib = config["memory_mib"] if memory_mib is None else memory_mib
    vcpus = config["vcpus"] if vcpus is None else vcpus
    if memory_mib < 64 or vcpus < 1:
        raise RunvError("a template needs at least 64 MiB of memory and 1 vCPU")
    hypervisor = loader.choose_hypervisor(settings.hypervisor, logger.debug)
    support = hypervisor.info.templates
    if support is None:
        raise RunvError(f"hypervisor {hypervisor.name!r} cannot make VM templates")
    caps = hypervisor.info.capabilities
    base = directory()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(f"{base}/{MAKING}{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    held = lock(work)
    try:
        (work / "pod").mkdir()  # the pod share, every VM's one share (runv.vm.podshare), never mounted in a template
        spec = base_vm(settings, caps, "template", work, config, memory_mib=memory_mib, vcpus=vcpus, hotplug_slots=hotplug_slots)
        vm_shape = match.shape(spec, hypervisor.name, support)
        if vm_shape is None:
            raise RunvError(f"hypervisor {hypervisor.name!r} cannot make a template of this shape")
        name = name or match.default_name(vm_shape)
        check_name(name)
        if unless_current and _is_current(name, vm_shape, spec, hypervisor.name, private):
            return None
        started = time.monotonic()
        vm = support.boot(spec, work, private)
        try:
            connect_agent(spec, vm, caps, lambda *_: None, lambda _m: None).close()
            saved = vm.save(work)
        finally:
            vm.stop(force=True)
        record = {
            "name": name,
            "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "seconds": round(time.monotonic() - started, 2),
            "source": match.source(spec.kernel, spec.initrd, digest=True),
            "shape": vm_shape,
            "saved": saved,
            "clones": "private" if private else "shared",
        }
        for leftover in LEFTOVERS:
            (work / leftover).unlink(missing_ok=True)
        (work / "pod").rmdir()
        fd = os.open(work / RECORD, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        final = base / name
        if final.exists():
            old = Path(f"{base}/{OLD}{name}-{os.getpid()}")
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(work, final)
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(held)


def _is_current(name: str, vm_shape: dict, spec: VMSpec, hypervisor: str, private: bool) -> bool:
    """Whether template ``name`` would serve a VM of ``vm_shape`` booting ``spec``'s kernel and initrd
    (the test ``--template NAME`` applies: same shape, not stale, files intact) with its clones' memory so."""
    try:
        record = read(name)
    except RunvError:
        return False
    if clones(record) != ("private" if private else "shared"):
        return False
    current = match.source(spec.kernel, spec.initrd)
    found, _warning = match.select(name, vm_shape, current, [record], directory(), hypervisor)
    return found is not None


def clones(record: dict) -> str:
    """How a template's clones get their memory: ``private`` or ``shared`` (older records:
    private when their RAM was saved into the stream)."""
    return record.get("clones") or ("private" if record.get("saved", {}).get("compress") else "shared")

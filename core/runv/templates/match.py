"""Which template may serve a VM: its shape, the guest it was made from, its files.

Pure functions of a VM, the hypervisor's answer and the records on disk, so they are
tested without booting anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import runv

if TYPE_CHECKING:
    from runv.api.hypervisor import TemplateSupport
    from runv.api.vm import VMSpec

AUTO, OFF = "auto", "off"


def file_identity(path: Path, digest: bool = False) -> dict:
    """Size and modification time of ``path`` (what is compared: cheap on every start),
    and its SHA-256 when ``digest`` (recorded when a template is made, for people)."""
    st = os.stat(path)
    found = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if digest:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        found["sha256"] = sha.hexdigest()
    return found


def source(kernel: Path, initrd: Path, digest: bool = False) -> dict:
    """What the guest is made of; a template whose source differs is stale."""
    return {"runv": runv.__version__, "kernel": file_identity(kernel, digest), "initrd": file_identity(initrd, digest)}


def shape(vm: VMSpec, hypervisor: str, templates: TemplateSupport | None) -> dict | None:
    """The VM's shape as a template records it, or None when the hypervisor cannot start
    this VM from a template."""
    vmm = templates.shape(vm) if templates is not None else None
    if vmm is None:
        return None
    return {"hypervisor": hypervisor, "memory_mib": vm.memory_mib, "vcpus": vm.vcpus, "kernel_args": list(vm.kernel_args), "vmm": vmm}


def default_name(vm_shape: dict) -> str:
    digest = hashlib.sha256(json.dumps(vm_shape, sort_keys=True).encode()).hexdigest()[:8]
    return f"{vm_shape['hypervisor']}-{vm_shape['memory_mib']}m-{vm_shape['vcpus']}c-{digest}"


def stale_reason(record: dict, current: dict) -> str | None:
    """Why a template made from ``record["source"]`` must not serve a guest made of ``current``."""
    made = record.get("source", {})
    if made.get("runv") != current["runv"]:
        return f"made by runv {made.get('runv')}, this is {current['runv']}"
    for what in ("kernel", "initrd"):
        was, now = made.get(what, {}), current[what]
        if (was.get("path"), was.get("size"), was.get("mtime_ns")) != (now["path"], now["size"], now["mtime_ns"]):
            return f"made from another {what} ({now['path']} changed since)"
    return None


def broken_reason(path: Path, record: dict) -> str | None:
    """Why the template's files cannot be used (missing, truncated), or None."""
    for name, size in record.get("saved", {}).get("files", {}).items():
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"its file {name} is missing"
        if actual != size:
            return f"its file {name} is truncated ({actual} of {size} bytes)"
    return None


def smaller_sizes(records: Iterable[dict], memory_mib: int, vcpus: int) -> list[tuple[int, int]]:
    """The (memory, vCPUs) of the templates in ``records`` a VM of ``memory_mib`` and
    ``vcpus`` can grow from (neither larger; not equal), the largest first."""
    sizes = set()
    for record in records:
        shape = record.get("shape") or {}
        size = (shape.get("memory_mib"), shape.get("vcpus"))
        if all(isinstance(v, int) for v in size) and size[0] <= memory_mib and size[1] <= vcpus and size != (memory_mib, vcpus):
            sizes.add(size)
    return sorted(sizes, reverse=True)


def select(choice: str, wanted: dict | None, current: dict, candidates: Iterable[dict], base: Path,
           hypervisor: str) -> tuple[dict | None, str | None]:
    """The record of the template to start a VM of shape ``wanted`` from (or None), and a
    one-line warning when a template was asked for, or looked usable, but cannot be used.
    ``candidates``: the named template's record, or (``auto``) every record."""
    if choice == OFF:
        return None, None
    if wanted is None:
        return None, (f"template {choice!r} not used: hypervisor {hypervisor!r} cannot start this VM from a template"
                      if choice != AUTO else None)
    warning = None
    for record in candidates:
        if choice == AUTO and record.get("shape") != wanted:
            continue
        label = f"template {record.get('name')!r}"
        if record.get("shape") != wanted:
            warning = warning or f"{label} not used: it was made for another VM shape (memory, vCPUs, devices or kernel arguments)"
            continue
        reason = stale_reason(record, current) or broken_reason(base / record["name"], record)
        if reason:
            warning = warning or f"{label} not used: {reason}"
            continue
        return record, None
    return None, warning

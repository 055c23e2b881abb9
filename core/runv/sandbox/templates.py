"""VM templates: a guest booted once to agent-ready and saved, restored for each container.

A template is a directory under :func:`directory` (``/var/lib/runv/templates`` or
``$RUNV_TEMPLATE_DIR``), root-only, holding what the hypervisor plugin saved
(``save_template``) and ``template.json``: what it was made from (kernel and initrd
identity, runv version, hypervisor, memory, vCPUs, kernel arguments and the plugin's
``template_shape``: machine options and device set). A container starts from a template
only when all of that matches its own VM exactly; anything else boots cold, with a
one-line warning when a template was chosen or looked usable but was stale or broken.

After a restore the guest agent is already running and will not say ``ready`` again: the
shim connects and sends ``clone`` (the poke), which sets the guest clock and reseeds its
RNG; ``prepare`` then mounts this container's rootfs and sets its hostname, as after a
cold boot. The container's NICs are hot-plugged after the restore (a template has none:
a NIC's MAC is device state). See docs/templates.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

import runv
from runv.errors import RunvError
from runv.log import logger
from runv.sandbox.vmspec import Share, VMSpec

if TYPE_CHECKING:
    from runv.agent.host import AgentClient
    from runv.plugins import Hooks
    from runv.sandbox.shim import Shim
    from runv.settings import Settings

DIR_ENV = "RUNV_TEMPLATE_DIR"
DEFAULT_DIR = Path("/var/lib/runv/templates")
RECORD = "template.json"
RESULT = "template.json"  # in a container's state directory: the template used, or why none
AUTO, OFF = "auto", "off"
POKE_TIMEOUT = 20.0  # seconds for a restored agent to answer its first request
DEFAULT_SHARES = ("rootfs",)  # the overlay plugin's share mode: the rootfs over 9p
DEFAULT_HOTPLUG_SLOTS = 2  # what the net plugin keeps free in every VM


def directory() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def kernel_args(debug: bool) -> tuple[str, ...]:
    """The kernel arguments the shim gives every VM (see Shim.vm_spec)."""
    return ("panic=-1", "rdinit=/init") + (("runv.debug",) if debug else ("quiet",))


# ---------------------------------------------------------------- identity


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


def source(kernel: Path, initrd: Path) -> dict:
    """What the guest is made of; a template whose source differs is stale."""
    return {"runv": runv.__version__, "kernel": file_identity(kernel), "initrd": file_identity(initrd)}


def shape(vm: VMSpec, hypervisor: str, hooks: Hooks) -> dict | None:
    """The VM's shape as a template records it, or None when the hypervisor cannot
    start this VM from a template."""
    vmm = hooks.template_shape(vm=vm)
    if vmm is None:
        return None
    return {"hypervisor": hypervisor, "memory_mib": vm.memory_mib, "vcpus": vm.vcpus, "kernel_args": list(vm.kernel_args), "vmm": vmm}


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


# ---------------------------------------------------------------- the store


def read(name: str) -> dict:
    path = directory() / name / RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunvError(f"template {name!r} does not exist in {directory()} (see `runv template list`)") from None
    except (OSError, ValueError) as exc:
        raise RunvError(f"template {name!r}: cannot read {path}: {exc}") from None


def all_records() -> list[dict]:
    """Every template's record, newest first (unreadable ones are skipped)."""
    found = []
    base = directory()
    if not base.is_dir():
        return []
    for entry in base.iterdir():
        if entry.name.startswith(".") or not (entry / RECORD).is_file():
            continue
        try:
            found.append(json.loads((entry / RECORD).read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: r.get("created", ""), reverse=True)


def default_name(vm_shape: dict) -> str:
    digest = hashlib.sha256(json.dumps(vm_shape, sort_keys=True).encode()).hexdigest()[:8]
    return f"{vm_shape['hypervisor']}-{vm_shape['memory_mib']}m-{vm_shape['vcpus']}c-{digest}"


def check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or name in (AUTO, OFF):
        raise RunvError(f"invalid template name {name!r}: not auto/off, no '/', not starting with '.'")


def remove(name: str) -> None:
    check_name(name)
    path = directory() / name
    if not (path / RECORD).exists() and not path.is_dir():
        raise RunvError(f"template {name!r} does not exist in {directory()}")
    shutil.rmtree(path)


# ---------------------------------------------------------------- making one


def create(
    settings: Settings,
    *,
    name: str | None = None,
    memory_mib: int = 256,
    vcpus: int = 1,
    shares: tuple[str, ...] = DEFAULT_SHARES,
    hotplug_slots: int = DEFAULT_HOTPLUG_SLOTS,
    compress: bool = False,
) -> dict:
    """Boots a VM of this shape to agent-ready, saves it as a template; returns its record."""
    from runv import plugins
    from runv.agent.host import AgentClient
    from runv.sandbox.shim import AGENT_TIMEOUT

    for what, path in (("kernel", settings.kernel), ("initrd", settings.initrd)):
        if not path.is_file():
            raise RunvError(f"guest {what} {path} does not exist: run `runv guest build` (or pass --{what})")
    if memory_mib < 64 or vcpus < 1:
        raise RunvError("a template needs at least 64 MiB of memory and 1 vCPU")
    info, module = plugins.choose_hypervisor(settings.hypervisor, logger.debug)
    hooks = plugins.Hooks((info.name, module))
    base = directory()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(f"{base}/.making-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    try:
        empty = work / "empty"  # what the template's shares point at: they are never mounted
        empty.mkdir()
        vm = VMSpec(
            name="template",
            state_dir=work,
            kernel=settings.kernel,  # as the shim names them: the paths are part of the shape
            initrd=settings.initrd,
            agent_socket=work / "agent.sock",
            console_log=work / "console.log",
            memory_mib=memory_mib,
            vcpus=vcpus,
            kernel_args=kernel_args(settings.debug),
            shares=tuple(Share(tag=tag, path=empty, readonly=True) for tag in shares),
            debug=settings.debug,
            hotplug_slots=hotplug_slots,
        )
        vm_shape = shape(vm, info.name, hooks)
        if vm_shape is None:
            raise RunvError(f"hypervisor {info.name!r} cannot make VM templates")
        name = name or default_name(vm_shape)
        check_name(name)
        agents: list[AgentClient] = []

        def ready(handle) -> None:
            def gone() -> str | None:
                from runv.sandbox.state import process_start_time

                if process_start_time(handle.pid) is None:
                    return f"the template VM exited during boot: {(work / 'console.log').read_text(errors='replace')[-500:]}"
                return None

            agents.append(AgentClient.connect(str(vm.agent_socket), lambda *_: None, lambda _m: None, timeout=AGENT_TIMEOUT, alive=gone))

        started = time.monotonic()
        saved = hooks.save_template(vm=vm, directory=work, compress=compress, ready=ready)
        for agent in agents:
            agent.close()
        if saved is None:
            raise RunvError(f"hypervisor {info.name!r} cannot make VM templates")
        record = {
            "name": name,
            "created": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "seconds": round(time.monotonic() - started, 2),
            "source": {
                "runv": runv.__version__,
                "kernel": file_identity(vm.kernel, digest=True),
                "initrd": file_identity(vm.initrd, digest=True),
            },
            "shape": vm_shape,
            "shares": list(shares),
            "saved": saved,
        }
        for leftover in ("agent.sock", "qmp.sock", "console.log"):
            (work / leftover).unlink(missing_ok=True)
        empty.rmdir()
        fd = os.open(work / RECORD, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        final = base / name
        if final.exists():
            old = Path(f"{base}/.old-{name}-{os.getpid()}")
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(work, final)
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- using one


def choose(choice: str, vm: VMSpec, hypervisor: str, hooks: Hooks) -> tuple[dict | None, str | None]:
    """The template to start ``vm`` from (its record) or None, and a one-line warning
    when a template was asked for, or looked usable, but cannot be used."""
    if choice == OFF:
        return None, None
    wanted = shape(vm, hypervisor, hooks)
    if wanted is None:
        return None, (f"template {choice!r} not used: hypervisor {hypervisor!r} cannot start this VM from a template" if choice != AUTO else None)
    current = source(vm.kernel, vm.initrd)
    if choice != AUTO:
        try:
            candidates = [read(choice)]
        except RunvError as exc:
            return None, str(exc)
    else:
        candidates = [r for r in all_records() if r.get("shape") == wanted]
    warning = None
    for record in candidates:
        label = f"template {record.get('name')!r}"
        if record.get("shape") != wanted:
            logger.debug("%s has shape %s; this VM needs %s", label, record.get("shape"), wanted)
            warning = warning or f"{label} not used: it was made for another VM shape (memory, vCPUs, devices or kernel arguments)"
            continue
        reason = stale_reason(record, current) or broken_reason(directory() / record["name"], record)
        if reason:
            warning = warning or f"{label} not used: {reason}"
            continue
        return record, None
    if choice == AUTO and not candidates:
        logger.debug("no template has this VM's shape: %s", wanted)
    return None, warning


def restore(shim: Shim, vm: VMSpec) -> object | None:
    """Starts the shim's VM from a template when one fits: returns the VM handle with
    ``shim.agent`` connected and the clone made its own; None (after a warning when one
    is due) to boot cold."""
    from runv.sandbox.vmspec import to_json

    choice = getattr(shim.settings, "template", AUTO)
    nics, vm = vm.nics, attrs.evolve(vm, nics=())  # a NIC's MAC is device state: hot-plugged after
    try:
        record, warning = choose(choice, vm, shim.hypervisor, shim.hooks)
    except (RunvError, OSError) as exc:
        record, warning = None, f"templates not used: {exc}"
    if record is not None:
        try:
            handle = shim.hooks.restore_template(vm=vm, directory=directory() / record["name"], record=record["saved"])
        except RunvError as exc:
            handle, warning = None, f"template {record['name']!r} not used: {exc}"
        if handle is not None:
            shim.handle = handle
            shim.store.update(shim.container.id, hypervisor=shim.hypervisor, vm=to_json(handle))
            try:
                shim.agent = poke(shim, vm, record["name"])
                for nic in nics:
                    shim.attach_nic(nic)
            except RunvError as exc:
                warning = f"template {record['name']!r} not used: {exc}"
                shim.hooks.stop_vm(handle=handle, force=True)
                shim.handle = handle = None
        if handle is not None:
            logger.info("container %s: VM restored from template %s", shim.container.id, record["name"])
            note(vm, {"template": record["name"]})
            return handle
    if warning:
        logger.warning("%s; booting cold", warning)
        note(vm, {"warning": f"{warning}; booting cold", "named": choice != AUTO})
    return None


def poke(shim: Shim, vm: VMSpec, name: str) -> AgentClient:
    """Connects to a restored agent and makes the clone its own (clock, RNG seed)."""
    from runv.agent.host import AgentClient, AgentError

    adopted = []  # until the clone answers, the shim must not see this client's events

    def on_data(channel, payload):
        if adopted:
            shim.on_data(channel, payload)

    def on_event(message):
        if adopted:
            shim.on_agent_event(message)

    from runv.sandbox.control import connect_unix  # deep --root dirs pass sun_path's limit

    try:
        sock = connect_unix(vm.agent_socket)
    except OSError as exc:
        raise RunvError(f"cannot connect to the restored VM's agent: {exc.strerror}") from None
    client = AgentClient(sock, on_data, on_event)
    try:
        reply = client.call("clone", timeout=POKE_TIMEOUT, seed=os.urandom(64).hex(), time=time.time())
    except AgentError as exc:
        client.close()
        raise RunvError(f"the restored guest agent did not answer: {exc}") from None
    client.ready_info = {"event": "ready", "template": name, **{k: v for k, v in reply.items() if k not in ("id", "ok")}}
    client.ready.set()
    adopted.append(True)
    return client


def note(vm: VMSpec, what: dict) -> None:
    """Records in the container's state directory whether it started from a template
    (``create`` prints a warning found there)."""
    where = vm.state_dir if vm.state_dir.is_absolute() else Path.cwd()  # the shim runs in it
    try:
        (where / RESULT).write_text(json.dumps(what))
    except OSError:
        pass


def warning_of(state_dir: Path) -> str | None:
    """The warning the shim recorded about the template named by ``--template NAME`` for
    this container, if any. (Under ``auto`` a stale or broken template is only logged:
    the container's caller reads create's stderr, and nothing asked for that template.)"""
    try:
        result = json.loads((state_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return result.get("warning") if result.get("named") else None

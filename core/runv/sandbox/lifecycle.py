"""The runc lifecycle as plain functions the CLI commands call: create, start, kill, delete."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

from runv.errors import RunvError
from runv.log import logger
from runv.log import setup as setup_logging
from runv.sandbox import control
from runv.sandbox.state import Record, Store
from runv.settings import Settings

SHIM_EXIT_WAIT = 15.0  # seconds delete waits for a stopping shim before killing it


def parse_signal(text: str) -> int:
    """``9``, ``KILL`` or ``SIGKILL`` (any case) as a signal number."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if number in signal.valid_signals():
            return number
    else:
        try:
            return signal.Signals[name if name.startswith("SIG") else "SIG" + name].value
        except KeyError:
            pass
    raise RunvError(f"invalid signal {text!r}: use a number, a name like TERM, or SIGTERM")


def check_guest(settings: Settings) -> None:
    for what, path in (("kernel", settings.kernel), ("initrd", settings.initrd)):
        if not path.is_file():
            raise RunvError(f"guest {what} {path} does not exist: run `runv guest build` (or pass --{what})")


def create(settings: Settings, container_id: str, bundle: Path, pid_file: Path | None) -> int:
    """Creates the container (a shim with a booted VM) and returns the shim's PID."""
    from runv import plugins
    from runv.oci.config import load_bundle
    from runv.sandbox.context import Container
    from runv.sandbox.shim import Shim, run

    store = Store(settings.root)
    store.dir(container_id)  # validates the id before anything else
    bundle = bundle.resolve()
    spec, rootfs = load_bundle(bundle)
    check_guest(settings)
    if (store.dir(container_id) / "state.json").exists():
        raise RunvError(f"container with id {container_id} already exists")
    hooks, hypervisor, storage = plugins.load(settings.hypervisor, settings.storage, logger.debug)
    state_dir = store.claim(container_id)
    created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    store.write(Record(id=container_id, bundle=str(bundle), rootfs=str(rootfs), created=created, annotations=spec.annotations))
    container = Container(id=container_id, bundle=bundle, rootfs=rootfs, spec=spec, state_dir=state_dir)
    shim = Shim(settings, store, container, hooks, hypervisor, storage)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.setsid()
            setup_logging(settings, stderr=False)  # the shim's stderr is the container's
            os.chdir(state_dir)
            code = run(shim, ready_w)
        finally:
            os._exit(code)
    os.close(ready_w)
    store.update(container_id, shim_pid=pid, shim_start=_start_time(pid))
    answer = b""
    while chunk := os.read(ready_r, 4096):
        answer += chunk
    os.close(ready_r)
    if answer != b"ok":
        os.waitpid(pid, 0)
        store.remove(container_id)
        message = answer.decode(errors="replace").removeprefix("error: ")
        raise RunvError(message or f"the shim of container {container_id} died during create")
    if pid_file:
        tmp = pid_file.with_name(pid_file.name + ".tmp")
        tmp.write_text(str(pid))
        os.replace(tmp, pid_file)
    return pid


def _start_time(pid: int) -> int:
    from runv.sandbox.state import process_start_time

    return process_start_time(pid) or 0


def start(settings: Settings, container_id: str) -> None:
    store = Store(settings.root)
    record = store.read(container_id)
    status = record.live_status()
    if status == "stopped":
        raise RunvError("cannot start a container that has stopped")
    if status != "created":
        raise RunvError(f"cannot start an already {status} container")
    control.call(store.dir(container_id), "start")


def kill(settings: Settings, container_id: str, signum: int, all_processes: bool) -> None:
    store = Store(settings.root)
    record = store.read(container_id)
    if record.live_status() not in ("created", "running"):
        raise RunvError("container not running")
    control.call(store.dir(container_id), "signal", signal=signum, all=all_processes)


def delete(settings: Settings, container_id: str, force: bool) -> None:
    """Removes a stopped (or, with ``force``, any) container; converges after any crash."""
    store = Store(settings.root)
    state_dir = store.dir(container_id)
    if not state_dir.is_dir():
        raise RunvError(f"container {container_id} does not exist")
    try:
        record = store.read(container_id)
    except RunvError:
        if not force:
            raise
        record = None
    if record is not None:
        status = record.live_status()
        if status in ("running", "paused") and not force:
            raise RunvError(f"cannot delete container {container_id} that is not stopped: {status}")
        _stop_shim(record)
        _teardown(record, container_id)
    store.remove(container_id)


def _stop_shim(record: Record) -> None:
    """Waits briefly for a shim that is already tearing down, else kills it."""
    if record.status == "stopped":
        deadline = time.monotonic() + SHIM_EXIT_WAIT
        while record.shim_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    if record.shim_alive():
        os.kill(record.shim_pid, signal.SIGKILL)
        while record.shim_alive():
            time.sleep(0.01)


def _teardown(record: Record, container_id: str) -> None:
    """Stops the VM and detaches storage the record names (whatever the shim left)."""
    from runv import plugins
    from runv.oci.config import load_bundle
    from runv.sandbox.context import Container
    from runv.sandbox.vmspec import attachment_from_json, handle_from_json

    if record.vm:
        plugins.load_hypervisor(record.hypervisor).stop_vm(handle=handle_from_json(record.vm), force=True)
    if record.attachment:
        hooks = plugins.Hooks((record.storage, plugins.choose("storage", record.storage).load()))
        bundle = Path(record.bundle)
        try:
            spec, _ = load_bundle(bundle)
        except RunvError:
            spec = None
        container = Container(id=container_id, bundle=bundle, rootfs=Path(record.rootfs), spec=spec, state_dir=Path())
        hooks.detach_storage(container=container, attachment=attachment_from_json(record.attachment))


def run(settings: Settings, container_id: str, bundle: Path, pid_file: Path | None, detach: bool) -> int:
    """create + start; in the foreground, relays signals to the shim, waits for it, deletes
    the container (as ``runc run`` does) and returns the container's exit code."""
    from runv.sandbox.shim import NOT_FORWARDED

    pid = create(settings, container_id, bundle, pid_file)
    try:
        start(settings, container_id)
    except RunvError:
        delete(settings, container_id, force=True)
        raise
    if detach:
        return 0
    for signum in signal.valid_signals() - NOT_FORWARDED:
        signal.signal(signum, lambda n, _frame: os.kill(pid, n))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    delete(settings, container_id, force=True)
    return code if code >= 0 else 128 - code

"""The runc lifecycle as plain functions the CLI commands call: create, start, kill, delete."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from runv.api.errors import RunvError
from runv.api.process import process_start_time
from runv.records import NoSuchContainer, Record, Store
from runv.settings import Settings
from runv.shim import control
from runv.vm.proctree import kill_tree

SHIM_EXIT_WAIT = 15.0  # seconds delete waits for a stopping shim before killing it
KILL_WAIT = 10.0  # seconds `kill KILL` waits for the shim before stopping the VM itself


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


def create(settings: Settings, container_id: str, bundle: Path, pid_file: Path | None, console_socket: Path | None = None) -> int:
    """Creates the container (a shim with a booted VM) and returns the shim's PID."""
    from datetime import UTC, datetime

    from runv import console
    from runv import loader as plugins
    from runv.api.container import Container
    from runv.log import logger
    from runv.log import setup as setup_logging
    from runv.oci.config import load_bundle
    from runv.shim.member import mounts_own
    from runv.shim.server import Shim
    from runv.shim.server import run as run_shim
    from runv.templates import background
    from runv.templates.store import warning_of
    from runv.verbs.lookpath import check_program
    from runv.vm import pidns, pods
    from runv.vm.spawn import OK, spawn_session, write_pid_file

    store = Store(settings.root)
    store.dir(container_id)  # validates the id before anything else
    bundle = bundle.resolve()
    spec, rootfs = load_bundle(bundle)
    if Path(os.path.realpath(rootfs)) == Path("/"):  # the share would export the host's root
        raise RunvError(f"{bundle}/config.json: root.path {spec.root.path!r} resolves to the host's /: refused")
    process = spec.process  # missing program: refused here, as runc's create does, before a VM boots
    check_program(str(rootfs), process.args, process.env, process.cwd, [str(m.get("destination", "")) for m in spec.mounts])
    if spec.process.terminal:
        if console_socket is None:
            raise RunvError("process.terminal is true: pass --console-socket to receive the terminal (or use `runv run -t` in a terminal)")
        console.check_console_socket(console_socket)
    settings.check_guest()
    if (store.dir(container_id) / "state.json").exists():
        raise RunvError(f"container with id {container_id} already exists")
    sandbox = pods.find(store, container_id, spec.annotations, spec.linux)  # a pod's VM to join, if any
    selection = plugins.load(settings.hypervisor, settings.storage, logger.debug)
    created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    me = os.getpid()
    state_dir = store.claim(Record(id=container_id, bundle=str(bundle), rootfs=str(rootfs), created=created,
                                   annotations=spec.annotations, creator_pid=me, creator_start=process_start_time(me),
                                   sandbox=sandbox or ""))
    container = Container(id=container_id, bundle=bundle, rootfs=rootfs, spec=spec, state_dir=state_dir)
    shim = Shim(settings, store, container, selection, console_socket, sandbox=sandbox or "")

    # the shim's own mount and PID namespaces, but for a member of an older shim's pod, which mounts in ours
    own_namespaces = not sandbox or mounts_own(store, sandbox)

    def child(report) -> int:
        if own_namespaces:
            try:
                pidns.enter()  # one thread yet: the fork's
            except RunvError as exc:
                report(str(exc))
                return 1
        os.chdir(state_dir)
        setup_logging(settings, stderr=False)  # the shim's stderr is the container's
        return run_shim(shim, report)

    pid, answer = spawn_session(child, own_pids=own_namespaces)
    if answer != OK:  # the shim tore down what it built, unless it died first: converge anyway
        try:
            _destroy(store, container_id)
        except NoSuchContainer:  # a `delete --force` took it meanwhile
            answer = answer or f"container {container_id} was deleted while it was being created"
        raise RunvError(answer.removeprefix("error: ") or f"the shim of container {container_id} died during create")
    write_pid_file(pid_file, pid)
    if warning := warning_of(state_dir):  # the shim fell back to a cold boot
        print(f"runv: warning: {warning}", file=sys.stderr)
    background.start_requested(state_dir)  # a template for the next container of its shape, if its shim asked
    return pid


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
    status = store.read(container_id).live_status()
    if status == "paused" and signum == signal.SIGKILL:
        pass  # KILL is the host's (the shim stops the VM): a frozen guest need not deliver it
    elif status == "paused":
        raise RunvError(f"container {container_id} is paused: resume it first (only KILL is delivered to a paused container)")
    elif status not in ("created", "running"):
        raise RunvError("container not running")
    if signum != signal.SIGKILL:
        control.call(store.dir(container_id), "signal", signal=signum, all=all_processes)
        return
    try:  # KILL is the host's: the shim stops the VM without asking the guest
        control.call(store.dir(container_id), "signal", timeout=KILL_WAIT, signal=signum, all=all_processes)
    except (RunvError, OSError) as exc:  # a shim that cannot answer: stop its VM and the shim from here
        from runv.log import logger

        logger.warning("container %s: the shim did not take KILL (%s); killing its VM and shim", container_id, exc)
        _kill_from_record(store.read(container_id))


def _kill_from_record(record: Record) -> None:
    from runv import loader
    from runv.log import logger

    if record.vm:
        try:
            loader.load_hypervisor(record.hypervisor).reattach(record.vm).stop(force=True)
        except RunvError as exc:
            from runv.api.hypervisor import VM

            logger.warning("container %s: %s; killing its VMM", record.id, exc)
            VM.from_record(record.vm).stop(force=True)
    kill_tree(record.shim_pid, record.shim_start)


def delete(settings: Settings, container_id: str, force: bool) -> None:
    """Removes a stopped (or, with ``force``, any) container; converges after any crash,
    and under a concurrent create or delete (see :func:`_destroy`)."""
    store = Store(settings.root)
    try:
        record, container = _destroy(store, container_id, check=None if force else _check_stopped)
    except NoSuchContainer:
        if force:  # as runc: callers (Podman after a failed create) delete --force blindly
            return
        raise
    if record is not None:
        from runv.vm.ocihooks import run_hooks

        run_hooks(container.spec, "poststop", record.oci_state().evolve(status="stopped"), fatal=False)


def _check_stopped(store: Store, record: Record) -> None:
    """What ``delete`` without ``--force`` refuses: a live container (named with the pod
    members that run in its VM), or one being created."""
    from runv.vm.pods import members

    status = record.live_status()
    if status in ("running", "paused"):
        others = members(store, record.id)
        pod = f" ({', '.join(others)} run in its VM: delete --force stops them too)" if others else ""
        raise RunvError(f"cannot delete container {record.id} that is not stopped: {status}{pod}")
    if status == "creating":  # its create is still running: it cleans up on failure
        raise RunvError(f"cannot delete container {record.id} that is being created (use --force)")


def _destroy(store: Store, container_id: str, check=None):
    """The one removal (``delete``, and ``create`` after its shim failed), all under the
    container's lock: ``check(store, record)`` may refuse; the shim is stopped with everything it
    started (a VMM it had not recorded yet included); what the record names is torn down;
    the directory goes. A shim not yet recorded cannot record itself meanwhile (it needs
    the lock) and finds the container gone. Returns the record and container torn down
    (Nones for a damaged record); raises NoSuchContainer when there is none."""
    from runv.vm import volumes

    store.sweep(container_id)
    state_dir = store.dir(container_id)
    with store.locked(container_id):
        try:
            record = store.read(container_id)
        except RunvError:  # missing or damaged: refused without --force, else the directory still goes
            if check is not None:
                raise
            record = None
        if check is not None:
            check(store, record)
        container = None
        if record is None:
            from runv.vm.teardown import empty_cgroup

            empty_cgroup(state_dir)  # the VM's cgroup is found from the directory alone
            volumes.release(state_dir)
        else:
            _stop_shim(record)
            container = record.container(state_dir)
            _teardown(store, record, container)
        store.remove(container_id)
    return record, container


def _stop_shim(record: Record) -> None:
    """Waits briefly for a shim that is already tearing down, else kills it with all it started."""
    if record.status == "stopped":
        deadline = time.monotonic() + SHIM_EXIT_WAIT
        while record.shim_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    kill_tree(record.shim_pid, record.shim_start)


def _teardown(store: Store, record: Record, container) -> None:
    """Runs the one teardown (:func:`runv.vm.teardown.teardown`) on whatever the record
    names: the VM, re-attached through its hypervisor, the network, the storage."""
    from runv import loader
    from runv.api.vm import attachment_from_json
    from runv.log import logger
    from runv.vm.teardown import teardown

    vm = None
    if record.vm:
        try:
            vm = loader.load_hypervisor(record.hypervisor).reattach(record.vm)
        except RunvError as exc:  # the plugin is gone: the VMM process is still ours to kill
            from runv.api.hypervisor import VM

            logger.warning("container %s: %s; killing its VMM", record.id, exc)
            vm = VM.from_record(record.vm)
    attachment = attachment_from_json(record.attachment) if record.attachment else None
    leave = (lambda: control.leave(store.dir(record.sandbox), record.id)) if record.sandbox else None
    teardown(container, loader.teardown_hooks(record.storage if attachment else None), vm, attachment, force=True, leave=leave)


def run(settings: Settings, container_id: str, bundle: Path, pid_file: Path | None, detach: bool, console_socket: Path | None = None) -> int:
    """create + start; in the foreground, relays signals to the shim (or the caller's
    terminal, for a terminal container without a console socket), waits for it, deletes
    the container (as ``runc run`` does) and returns the container's exit code."""
    from runv import console
    from runv.oci.config import load_bundle
    from runv.shim.control import NOT_FORWARDED

    if console_socket is None and load_bundle(bundle.resolve())[0].process.terminal:
        if detach:
            raise RunvError("cannot allocate a terminal for a detached container without --console-socket")
        console.require_terminal()
        with console.private_console_socket() as (path, listener):
            pid = create(settings, container_id, bundle, pid_file, path)
            master = console.receive_master(listener)
            _start_or_delete(settings, container_id)
            console.attach(master)
            return _finish(settings, container_id, pid)
    pid = create(settings, container_id, bundle, pid_file, console_socket)
    _start_or_delete(settings, container_id)
    if detach:
        return 0
    for signum in signal.valid_signals() - NOT_FORWARDED:
        signal.signal(signum, lambda n, _frame: os.kill(pid, n))
    return _finish(settings, container_id, pid)


def _start_or_delete(settings: Settings, container_id: str) -> None:
    try:
        start(settings, container_id)
    except RunvError:
        delete(settings, container_id, force=True)
        raise


def _finish(settings: Settings, container_id: str, pid: int) -> int:
    from runv.vm.spawn import wait_exit_code

    code = wait_exit_code(pid)
    delete(settings, container_id, force=True)
    return code


def pause(settings: Settings, container_id: str) -> None:
    """Freezes the container's VM through its hypervisor (QEMU: QMP ``stop``)."""
    _freeze(settings, container_id, "running", "paused", "container not running")


def resume(settings: Settings, container_id: str) -> None:
    _freeze(settings, container_id, "paused", "running", "container not paused")


def _freeze(settings: Settings, container_id: str, before: str, after: str, refusal: str) -> None:
    from runv import loader

    store = Store(settings.root)
    with store.locked(container_id):
        record = store.read(container_id)
        if record.live_status() != before:
            raise RunvError(refusal)
        if record.sandbox:  # a pod member: its processes in the guest, not the pod's VM
            control.call(store.dir(container_id), "freeze", frozen=after == "paused")
        else:
            vm = loader.load_hypervisor(record.hypervisor).reattach(record.vm)
            vm.pause() if after == "paused" else vm.resume()
        store.write(record.evolve(status=after))


def ask_shim(settings: Settings, container_id: str, op: str, **args) -> dict:
    """A request the shim answers from the guest (ps, stats, update): the container must be up."""
    store = Store(settings.root)
    status = store.read(container_id).live_status()
    if status == "paused":
        raise RunvError(f"container {container_id} is paused: resume it first")
    if status not in ("created", "running"):
        raise RunvError("container not running")
    return control.call(store.dir(container_id), op, **args)


def host_pids(settings: Settings, container_id: str) -> list[int]:
    """The host processes that run the container: its shim (the state's pid) and its VMM.
    What ``runv ps --format json`` gives, for Docker's ``top`` and containerd's task pids,
    which look these up in the host's ``ps``: the guest's PIDs mean nothing there (Kata's
    shim answers with its hypervisor's pid alone)."""
    record = Store(settings.root).read(container_id)
    if record.live_status() not in ("created", "running", "paused"):
        raise RunvError("container not running")
    vmm = (record.vm or {}).get("pid")
    return [record.shim_pid] + ([vmm] if isinstance(vmm, int) and vmm > 0 else [])

"""The per-container shim: the process whose PID callers see as the container's.

It brings the VM up (:mod:`runv.vm.bringup`), owns the one connection to the guest
agent, relays the container's stdio, forwards the signals it receives to the container
process, serves the CLI over a control socket (exec: :mod:`runv.shim.execrelay`), tears
the VM down when the container exits (:mod:`runv.vm.teardown`), and exits with the
container's exit code (128+N when killed by signal N).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runv import console as terminal
from runv.api.errors import RunvError
from runv.api.frozen import to_json
from runv.api.process import process_start_time
from runv.api.vm import StorageAttachment
from runv.log import logger
from runv.oci.config import ConsoleSize
from runv.records import NoSuchContainer
from runv.shim import control
from runv.shim.control import NOT_FORWARDED, exit_code
from runv.shim.execrelay import SIGNAL_TIMEOUT, Outbox
from runv.stdio import start_pump, write_all
from runv.vm import bringup
from runv.vm.agentclient import AgentClient, AgentError
from runv.vm.limits import Limits
from runv.vm.ocihooks import run_hooks
from runv.vm.podhost import PodHost
from runv.vm.proctree import child_status
from runv.vm.spawn import OK
from runv.vm.teardown import teardown

if TYPE_CHECKING:
    from runv.api.container import Container
    from runv.api.hypervisor import VM
    from runv.loader import Selection
    from runv.records import Store
    from runv.settings import Settings

INIT = "init"  # the agent's name for the container process
STREAMS = {"stdin": 1, "stdout": 2, "stderr": 3}  # the container process's agent channels
BENIGN = {signal.SIGCONT, signal.SIGWINCH, signal.SIGCHLD, signal.SIGURG}  # do not stop a created container
REPLY_GRACE = 10.0  # seconds an exiting shim waits to answer requests in flight
CLOSED_CODE = 255  # the exit code when the VM closes the agent channel without an exit
KILLED_CODE = 128 + signal.SIGKILL  # the exit code of a container the host killed
CONSOLE_CAP = 8 << 20  # bytes of console.log (the guest writes it) before it is cut to its tail
CONSOLE_KEEP = 1 << 20  # bytes of its tail kept in console.log.1 when it is cut
CONSOLE_CHECK = 1.0  # seconds between looks at its size
VMM_EXIT_WAIT = 2.0  # seconds a closed agent channel waits for the VMM's exit status


class Shim(PodHost):
    def __init__(self, settings: Settings, store: Store, container: Container, plugins: Selection,
                 console_socket: Path | None = None) -> None:
        self.settings = settings
        self.store = store
        self.container = container
        self.hooks = plugins.hooks
        self.hypervisor = plugins.hypervisor
        self.caps = plugins.hypervisor.info.capabilities
        self.storage = plugins.storage
        self.attachment: StorageAttachment | None = None
        self.vm: VM | None = None
        self.agent: AgentClient | None = None
        self.events: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.started = False
        self.console_socket = console_socket
        self.stdio = (0, 1, 2)  # the container's stdio on the host: the caller's, or a pty slave
        self.routes: dict[int, Callable[[bytes], None]] = {}  # agent output channel -> sink
        self.exits: dict[str, Callable[[dict], None]] = {}  # exec'd process name -> exit handler
        self.answering = threading.Condition()  # counts control requests not yet answered
        self.unanswered = 0
        self.killed = False  # SIGKILL: the host stopped the VM; the guest is not asked
        self.outboxes: list = []  # the container's output streams, drained by threads of their own
        self.limits = Limits(container.id, container.spec.linux.get("resources"))  # as `runv update` leaves them
        self.members: dict[str, Container] = {}  # the containers that joined this VM (runv.vm.podhost)

    # ---------------------------------------------------------------- boot

    def boot(self) -> None:
        """Attaches storage, boots (or restores) the VM, waits for the agent, mounts the rootfs."""
        from runv.templates import background, restore

        cid = self.container.id
        confined = bringup.confinement(self.container)
        self.attach_storage()
        spec = bringup.container_vm(self.settings, self.caps, self.hooks, self.container, self.attachment)
        bringup.check_vm(spec, self.caps, self.hypervisor.name)
        self.limits.booted(spec.memory_mib, spec.vcpus)
        self.store.update(cid, netns=bringup.served_netns(self.container))
        logger.debug("booting %s with %s: %s", cid, self.hypervisor.name, spec)
        restored = restore.restore(self.settings.template, spec, self.hypervisor, self.on_data, self.on_agent_event,
                           persist=self.persist, attach_nic=lambda vm, nic: bringup.attach_nic(vm, self.caps, nic))
        if restored:
            self.vm, self.agent = restored
        else:
            self.persist(self.hooks.boot(vm=spec))
            self.agent = bringup.connect_agent(spec, self.vm, self.caps, self.on_data, self.on_agent_event)
            background.after_cold_boot(self.settings, self.hypervisor, spec)
        self.agent.call("prepare", **bringup.vm_prepare_request(self.container, self.attachment, spec, self.caps, confined))
        if self.container.spec.process.terminal:
            self.open_terminal()
        state = self.store.read(cid).oci_state()
        for kind in ("createRuntime", "createContainer", "prestart"):
            run_hooks(self.container.spec, kind, state.evolve(status="creating" if kind == "createRuntime" else "created"), fatal=True)
        self.sync_net()

    def attach_storage(self) -> None:
        """The container's storage (:func:`runv.vm.bringup.attach_storage`), recorded for the teardown."""
        self.attachment = bringup.attach_storage(self.container, self.hooks, self.storage)
        self.store.update(self.container.id, storage=self.storage, attachment=to_json(self.attachment))

    def persist(self, vm: VM | None) -> None:  # in memory and in the record: a crash leaves it findable
        if vm is None:
            raise RunvError(f"hypervisor plugin {self.hypervisor.name!r} booted nothing")
        self.vm = vm
        self.store.update(self.container.id, hypervisor=self.hypervisor.name, vm=vm.record())

    def sync_net(self) -> None:
        self.hooks.sync_net(container=self.container, agent=self.agent, attach=lambda nic: bringup.attach_nic(self.vm, self.caps, nic))

    def open_terminal(self) -> None:
        """The container's pty: its master goes to the console socket, its slave becomes
        the shim's controlling terminal, so resizes arrive here as SIGWINCH."""
        size = self.container.spec.process.console_size
        master, slave = terminal.open_pty(size.height, size.width) if size else terminal.open_pty()
        terminal.take_controlling_tty(slave)
        terminal.send_master(self.console_socket, master)
        terminal.stdio_to(slave)  # containerd reads create's output until EOF: let go of it
        self.stdio = (slave, slave, slave)

    # ---------------------------------------------------------------- serving

    def serve(self, report: Callable[[str], None]) -> int:
        """Tells ``create`` the container is created, then runs until the container exits."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        server.bind(control.SOCKET)  # relative: the shim runs in the container's state directory
        server.listen(16)
        threading.Thread(target=self.accept_loop, args=(server,), name="control", daemon=True).start()
        threading.Thread(target=cap_console, args=(Path(control.CONSOLE_LOG),), name="console-cap", daemon=True).start()
        for signum in signal.valid_signals() - NOT_FORWARDED:
            signal.signal(signum, lambda n, _frame: self.events.put(("signal", n)))
        signal.signal(signal.SIGWINCH, lambda *_: self.events.put(("winch", None)))
        self.store.update(self.container.id, status="created")
        if not report(OK):  # its `runv create` was killed: nobody knows this container's pid
            logger.warning("container %s: its create died before returning; stopping it", self.container.id)
            return KILLED_CODE
        while True:
            try:
                kind, value = self.events.get(timeout=1.0)
            except queue.Empty:
                continue
            if kind == "signal":
                code = self.forward_signal(value)
            elif kind == "winch":
                code = self.resize()
            elif kind == "killed" or (self.killed and kind in ("exit", "closed")):
                code = KILLED_CODE
            elif kind == "exit" and value.get("proc") == INIT:
                code = exit_code(value)
            elif kind == "closed":
                code = self.closed_code(value.get("reason") or "the VM closed the agent channel")
            else:
                code = None
            if code is not None:
                with self.answering:  # a fast exit must not cut off the reply to `start`
                    self.answering.wait_for(lambda: self.unanswered == 0, timeout=REPLY_GRACE)
                return code

    def closed_code(self, reason: str) -> int:
        """The exit code when the agent channel closed without the container's exit:
        128+N when the VMM was killed by signal N (``kill -9`` of QEMU reads as 137, as
        a container killed by SIGKILL does), else CLOSED_CODE."""
        status = None if self.vm is None else child_status(self.vm.pid, VMM_EXIT_WAIT)
        if status is not None and os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            logger.error("container %s: its VMM was killed by signal %d", self.container.id, signum)
            return 128 + signum
        logger.error("container %s: %s", self.container.id, reason)
        return CLOSED_CODE

    def accept_loop(self, server: socket.socket) -> None:
        while conn := server.accept()[0]:
            threading.Thread(target=self.handle_client, args=(conn,), daemon=True).start()

    def handle_client(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = json.loads(conn.makefile("rb").readline() or b"{}")
            except ValueError:
                request = {}
            if request.get("op") == "exec":
                return self.serve_exec(conn, request)
            with self.answering:
                self.unanswered += 1
            try:
                reply = self.answer(request)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass  # the caller went away
            finally:
                with self.answering:
                    self.unanswered -= 1
                    self.answering.notify_all()

    def serve_exec(self, conn: socket.socket, request: dict) -> None:
        from runv.shim.execrelay import serve_exec
        serve_exec(self, conn, request)

    def answer(self, request: dict) -> dict:
        """The reply to one control request (never raises)."""
        try:
            handler = getattr(self, "op_" + str(request.get("op", "")), None)
            if handler is None:
                raise RunvError(f"unknown shim operation {request.get('op')!r}")
            return {"ok": True, **(handler(request) or {})}
        except RunvError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the CLI must get an answer
            logger.error("shim: %s", traceback.format_exc())
            return {"error": f"internal error in the shim: {exc}"}

    def op_start(self, request: dict) -> None:
        with self.lock:
            if self.started:
                raise RunvError(f"cannot start an already running container {self.container.id}")
            self.sync_net()
            process = self.container.spec.process
            if process.terminal:  # the caller may have resized the pty since create
                rows, cols = terminal.get_winsize(self.stdio[0])
                if rows and cols:
                    process = process.evolve(console_size=ConsoleSize(height=rows, width=cols))
            self.routes[STREAMS["stdout"]] = self.sink(self.stdio[1])
            if not process.terminal:  # a terminal has one output stream
                self.routes[STREAMS["stderr"]] = self.sink(self.stdio[2])
            self.hooks.exec(container=self.container, process=process, agent=self.agent, name=INIT, streams=STREAMS)
            self.started = True
            record = self.store.update(self.container.id, status="running")
        run_hooks(self.container.spec, "poststart", record.oci_state(), fatal=False)
        start_pump(
            self.stdio[0],
            lambda data: self.agent.send_data(STREAMS["stdin"], data),
            on_hangup=lambda: self.events.put(("signal", signal.SIGHUP)),
        )

    def op_signal(self, request: dict) -> None:
        signum = request.get("signal")
        if type(signum) is not int or signum not in signal.valid_signals():
            raise RunvError(f"invalid signal {signum!r}")
        if signum == signal.SIGKILL:
            return self.kill_vm()
        if not self.started:
            self.events.put(("signal", signum))
            return
        try:
            self.agent.call("signal", timeout=SIGNAL_TIMEOUT, proc=INIT, signal=signum, all=bool(request.get("all")))
        except AgentError as exc:
            raise RunvError(f"container {self.container.id}: signal {signum} not delivered: {exc}") from None

    def kill_vm(self) -> None:
        """SIGKILL is the host's: the VM is stopped from outside at once (the guest is never
        asked, so a hostile agent cannot refuse it) and the container stops with 137."""
        self.killed = True
        logger.debug("container %s: SIGKILL, stopping the VM from the host", self.container.id)
        if self.vm is not None:
            try:
                self.vm.stop(force=True)
            except RunvError as exc:
                logger.error("container %s: cannot kill the VM: %s", self.container.id, exc)
        self.events.put(("killed", None))

    def op_ps(self, request: dict) -> dict:
        return {"processes": self.agent.call("ps", **self.scope(request))["processes"]}

    def op_stats(self, request: dict) -> dict:
        return self.agent.call("stats", **self.scope(request))

    def op_update(self, request: dict) -> None:
        with self.lock:
            self.limits.update(request.get("resources"), self.vm, self.agent, self.caps, self.hypervisor.name)

    def resize(self) -> None:
        """Passes the pty's new window size to the container process (SIGWINCH in the guest)."""
        if self.started and self.container.spec.process.terminal:
            rows, cols = terminal.get_winsize(self.stdio[0])
            try:
                self.agent.call("winsize", timeout=SIGNAL_TIMEOUT, proc=INIT, rows=rows, cols=cols)
            except AgentError as exc:
                logger.debug("window size not delivered: %s", exc)

    def forward_signal(self, signum: int) -> int | None:
        """Delivers a signal to the container process; before start a terminating signal
        stops the created container (as runc's kill of a created container does)."""
        if not self.started:
            return None if signum in BENIGN else 128 + signum
        try:
            self.agent.call("signal", timeout=SIGNAL_TIMEOUT, proc=INIT, signal=signum)
        except AgentError as exc:
            logger.debug("signal %d not delivered: %s", signum, exc)
        return None

    # ---------------------------------------------------------------- streams

    def sink(self, fd: int) -> Callable[[bytes], None]:
        """Writes a stream to one of the container's host fds, from a bounded outbox with a
        thread of its own (a slow reader never holds up the agent channel); once the caller
        closed its end, output is dropped, as a closed pipe would."""
        outbox = Outbox(lambda data: write_all(fd, data), f"container {self.container.id} fd {fd}")
        self.outboxes.append(outbox)
        return outbox.put

    def on_data(self, channel: int, payload: bytes) -> None:
        route = self.routes.get(channel)
        if route is not None and payload:
            route(payload)

    def on_agent_event(self, message: dict) -> None:
        if message["event"] == "exit" and message["proc"] != INIT:
            handler = self.exits.get(message["proc"])
            if handler:
                handler(message)
            return
        self.events.put((message["event"], message))

    def teardown(self, force: bool = False) -> None:
        """Closes the agent and takes the VM down (see :func:`runv.vm.teardown.teardown`)."""
        for outbox in self.outboxes:  # the container's last output reaches its stdout first
            outbox.finish(timeout=2.0)
        if self.agent:
            self.agent.close()
        teardown(self.container, self.hooks, self.vm, self.attachment, force=force)


def cap_console(path: Path, cap: int = CONSOLE_CAP, keep: int = CONSOLE_KEEP, every: float = CONSOLE_CHECK) -> None:
    """Keeps the console log (appended to by the VMM, written by the guest) bounded: once
    it passes ``cap`` bytes its last ``keep`` go to ``console.log.1`` and it is emptied (the
    VMM appends with O_APPEND, so it carries on at the new end)."""
    while True:
        time.sleep(every)
        try:
            with open(path, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if size <= cap:
                    continue
                f.seek(size - keep)
                tail = f.read(keep)
                path.with_name(path.name + ".1").write_bytes(tail)
                f.truncate(0)
        except OSError:
            continue


def run(shim: Shim, report: Callable[[str], bool]) -> int:
    """The shim process's whole life; returns its exit code. Its first act is to record
    itself under the container's lock, so a concurrent ``delete --force`` either finds it
    (and kills it with all it starts) or removed the container first (nothing is built)."""
    cid = shim.container.id
    me = os.getpid()
    try:
        shim.store.update(cid, shim_pid=me, shim_start=process_start_time(me))
    except NoSuchContainer:
        report(f"container {cid} was deleted while it was being created")
        return 1
    try:
        shim.boot()
    except Exception as exc:  # noqa: BLE001 - every failure must reach `create` as one line
        message = str(exc) if isinstance(exc, RunvError) else f"internal error: {exc!r}"
        if not isinstance(exc, RunvError):
            logger.error("%s", traceback.format_exc())
        try:
            shim.teardown(force=True)
        except Exception:  # noqa: BLE001 - logged by teardown; create reports the boot failure
            pass
        finally:
            report(message)
        return 1
    try:
        code = shim.serve(report)
    except Exception:  # noqa: BLE001
        logger.error("shim of %s failed: %s", cid, traceback.format_exc())
        code = CLOSED_CODE
    shim.store.update(cid, status="stopped", exit_code=code)
    logger.debug("container %s exited with %d", cid, code)
    try:
        shim.teardown()
    except Exception:  # noqa: BLE001 - logged by teardown; the exit code is the container's
        pass
    return code

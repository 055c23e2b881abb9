"""The per-container shim: the process whose PID callers see as the container's.

It boots the VM through the hooks, owns the one connection to the guest agent, relays
the container's stdio, forwards the signals it receives to the container process, serves
the CLI over a control socket, tears the VM down when the container exits, and exits
with the container's exit code (128+N when killed by signal N).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import attrs

from runv.agent.host import AgentClient, AgentError
from runv.agent.protocol import CTRL, FrameReader, encode_ctrl, encode_data
from runv.errors import RunvError
from runv.log import logger
from runv.plugins import Hooks
from runv.oci.config import ConsoleSize
from runv.sandbox import console, control
from runv.sandbox.context import Container
from runv.sandbox.ocihooks import run_hooks
from runv.sandbox.spawn import OK
from runv.sandbox.state import Store, process_start_time
from runv.sandbox.stdio import start_pump, write_all
from runv.sandbox.vmspec import StorageAttachment, VMHandle, VMSpec, to_json
from runv.settings import Settings
from runv.storage import volumes

AGENT_TIMEOUT = 120.0  # seconds from VMM start to agent ready (TCG on a loaded 2-core host)
INIT = "init"
STREAMS = {"stdin": 1, "stdout": 2, "stderr": 3}
NOT_FORWARDED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH, signal.SIGPIPE}
BENIGN = {signal.SIGCONT, signal.SIGWINCH, signal.SIGCHLD, signal.SIGURG}  # do not stop a created container
CONSOLE_TAIL = 15
GUEST_DEVICES = "io.runv.guest-devices"  # "true": the container's /dev is the VM's devtmpfs
REPLY_GRACE = 10.0  # seconds an exiting shim waits to answer requests in flight


def exit_code(status: dict) -> int:
    """An agent exit event as a shell-style exit code."""
    return status["code"] if "code" in status else 128 + status["signal"]


class Shim:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        container: Container,
        hooks: Hooks,
        hypervisor: str,
        storage: str,
        console_socket: Path | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.container = container
        self.hooks = hooks
        self.hypervisor = hypervisor
        self.storage = storage
        self.attachment: StorageAttachment | None = None
        self.handle: VMHandle | None = None
        self.agent: AgentClient | None = None
        self.events: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.started = False
        self.console_socket = console_socket
        self.stdio = (0, 1, 2)  # the container's stdio on the host: the caller's, or a pty slave
        self.routes: dict[int, Callable[[bytes], None]] = {}  # agent output channel -> sink
        self.exits: dict[str, Callable[[dict], None]] = {}  # exec'd process name -> exit handler
        self.exec_ids = itertools.count(1)
        self.answering = threading.Condition()  # counts control requests not yet answered
        self.unanswered = 0

    # ---------------------------------------------------------------- boot

    def vm_spec(self) -> VMSpec:
        state_dir = self.container.state_dir
        args = ("panic=-1", "rdinit=/init") + (("runv.debug",) if self.settings.debug else ("quiet",))
        vm = VMSpec(
            name=self.container.id,
            state_dir=state_dir,
            kernel=self.settings.kernel,
            initrd=self.settings.initrd,
            agent_socket=state_dir / "agent.sock",
            console_log=state_dir / "console.log",
            kernel_args=args,
            shares=self.attachment.shares,
            disks=self.attachment.disks,
            debug=self.settings.debug,
        )
        for extra in self.hooks.configure_net(container=self.container):
            vm = vm.with_contribution(extra)
        for extra in self.hooks.prepare_vm(container=self.container, vm=vm):
            vm = vm.with_contribution(extra)
        return vm

    def boot(self) -> None:
        """Attaches storage, boots the VM, waits for the agent and mounts the rootfs."""
        cid = self.container.id
        state_dir = self.container.state_dir
        volume_shares, volume_mounts, host_binds = volumes.plan(self.container.spec.mounts, state_dir / "volumes")
        volumes.stage(host_binds)
        self.attachment = self.hooks.attach_storage(container=self.container)
        if self.attachment is None:
            raise RunvError(f"storage plugin {self.storage!r} attached nothing for container {cid}")
        self.attachment = self.attachment.plus(shares=volume_shares, mounts=volume_mounts)
        self.store.update(cid, storage=self.storage, attachment=to_json(self.attachment))
        vm = self.vm_spec()
        logger.debug("booting %s with %s: %s", cid, self.hypervisor, vm)
        from runv.sandbox import templates

        self.handle = templates.restore(self, vm) or self.hooks.boot(vm=vm)  # a restore connects self.agent
        self.store.update(cid, hypervisor=self.hypervisor, vm=to_json(self.handle))
        started = time.monotonic()
        self.agent = self.agent or AgentClient.connect(
            str(vm.agent_socket), self.on_data, self.on_agent_event, timeout=AGENT_TIMEOUT, alive=lambda: self.vm_gone(vm)
        )
        logger.debug("agent ready after %.2f s: %s", time.monotonic() - started, self.agent.ready_info)
        root = self.attachment.rootfs
        self.agent.call(
            "prepare",
            rootfs={"source": root.source, "fstype": root.fstype, "options": root.options, "readonly": root.readonly},
            mounts=[to_json(m) for m in self.attachment.mounts],
            hostname=self.container.spec.hostname,
            guest_devices=self.container.annotations.get(GUEST_DEVICES) == "true",
        )
        if self.container.spec.process.terminal:
            self.open_terminal()
        state = self.store.read(self.container.id).oci_state()
        for kind in ("createRuntime", "createContainer", "prestart"):
            run_hooks(self.container.spec, kind, attrs.evolve(state, status="creating" if kind == "createRuntime" else "created"), fatal=True)
        self.hooks.sync_net(container=self.container, agent=self.agent, attach=self.attach_nic)

    def attach_nic(self, nic) -> None:
        """Hot-plugs a NIC a network plugin wired after boot (for ``sync_net``)."""
        if not self.hooks.attach_nic(handle=self.handle, nic=nic):
            raise RunvError(f"hypervisor {self.hypervisor!r} cannot hot-plug network interfaces")

    def open_terminal(self) -> None:
        """The container's pty: its master goes to the console socket, its slave becomes
        the shim's controlling terminal, so resizes arrive here as SIGWINCH."""
        size = self.container.spec.process.console_size
        master, slave = console.open_pty(size.height, size.width) if size else console.open_pty()
        console.take_controlling_tty(slave)
        console.send_master(self.console_socket, master)
        console.stdio_to(slave)  # containerd reads create's output until EOF: let go of it
        self.stdio = (slave, slave, slave)

    def vm_gone(self, vm: VMSpec) -> str | None:
        """Why the VM is no longer running, or None while it is."""
        if process_start_time(self.handle.pid) is not None:
            return None
        return f"the VM of container {self.container.id} exited during boot: {vm.last_words(CONSOLE_TAIL)}"

    # ---------------------------------------------------------------- serving

    def serve(self, report: Callable[[str], None]) -> int:
        """Tells ``create`` the container is created, then runs until the container exits."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        server.bind(control.SOCKET)  # relative: the shim runs in the container's state directory
        server.listen(16)
        threading.Thread(target=self.accept_loop, args=(server,), name="control", daemon=True).start()
        for signum in signal.valid_signals() - NOT_FORWARDED:
            signal.signal(signum, lambda n, _frame: self.events.put(("signal", n)))
        signal.signal(signal.SIGWINCH, lambda *_: self.events.put(("winch", None)))
        self.store.update(self.container.id, status="created")
        report(OK)
        while True:
            try:
                kind, value = self.events.get(timeout=1.0)
            except queue.Empty:
                continue
            if kind == "signal":
                code = self.forward_signal(value)
            elif kind == "winch":
                code = self.resize()
            elif kind == "exit" and value.get("proc") == INIT:
                code = exit_code(value)
            elif kind == "closed":
                logger.error("container %s: the VM closed the agent channel", self.container.id)
                code = 255
            else:
                code = None
            if code is not None:
                with self.answering:  # a fast exit must not cut off the reply to `start`
                    self.answering.wait_for(lambda: self.unanswered == 0, timeout=REPLY_GRACE)
                return code

    def accept_loop(self, server: socket.socket) -> None:
        while True:
            conn, _ = server.accept()
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
            self.hooks.sync_net(container=self.container, agent=self.agent, attach=self.attach_nic)
            process = self.container.spec.process
            if process.terminal:  # the caller may have resized the pty since create
                rows, cols = console.get_winsize(self.stdio[0])
                if rows and cols:
                    process = attrs.evolve(process, console_size=ConsoleSize(height=rows, width=cols))
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
        signum = int(request["signal"])
        if not self.started:
            self.events.put(("signal", signum))
            return
        self.agent.call("signal", proc=INIT, signal=signum, all=bool(request.get("all")))

    def op_ps(self, request: dict) -> dict:
        return {"processes": self.agent.call("ps")["processes"]}

    def op_stats(self, request: dict) -> dict:
        return self.agent.call("stats")

    def resize(self) -> None:
        """Passes the pty's new window size to the container process (SIGWINCH in the guest)."""
        if self.started and self.container.spec.process.terminal:
            rows, cols = console.get_winsize(self.stdio[0])
            try:
                self.agent.call("winsize", proc=INIT, rows=rows, cols=cols)
            except AgentError as exc:
                logger.debug("window size not delivered: %s", exc)

    def serve_exec(self, conn: socket.socket, request: dict) -> None:
        """Starts an exec'd process and relays its streams and signals over ``conn``
        (see execproc.Relay for the other end) until it exits."""
        from runv.oci.config import parse_process

        number = next(self.exec_ids)
        name = f"exec-{number}"
        base = 16 * number  # channels base+1..3, clear of the container's 1..3
        streams = {"stdin": base + 1, "stdout": base + 2, "stderr": base + 3}
        send_lock = threading.Lock()
        exited = threading.Event()
        held: list[bytes] | None = []  # output that arrived before the reply line went out

        def send(frame: bytes, reply: bool = False) -> None:
            nonlocal held
            with send_lock:
                if held is not None and not reply:
                    held.append(frame)
                    return
                frames = [frame] + (held or [])
                held = None
                try:
                    for item in frames:
                        conn.sendall(item)
                except OSError:
                    pass  # the relay is gone; the process still runs to its end

        def on_exit(message: dict) -> None:
            send(encode_ctrl({k: v for k, v in message.items() if k in ("code", "signal")}))
            exited.set()

        process = parse_process(request.get("process"), "exec request")
        self.routes[streams["stdout"]] = lambda data: send(encode_data(1, data))
        self.routes[streams["stderr"]] = lambda data: send(encode_data(2, data))
        self.exits[name] = on_exit
        try:
            pid = self.hooks.exec(container=self.container, process=process, agent=self.agent, name=name, streams=streams)
        except RunvError as exc:
            self.forget(name, streams)
            send(json.dumps({"error": str(exc)}).encode() + b"\n", reply=True)
            return
        send(json.dumps({"ok": True, "pid": pid}).encode() + b"\n", reply=True)
        reader = FrameReader()
        try:
            while not exited.is_set() and (data := conn.recv(65536)):
                for kind, _channel, payload in reader.feed(data):
                    if kind == CTRL and payload.get("op") == "signal":
                        self.agent.call("signal", proc=name, signal=int(payload["signal"]))
                    elif kind == CTRL and payload.get("op") == "winsize":
                        self.agent.call("winsize", proc=name, rows=payload["size"][0], cols=payload["size"][1])
                    elif kind != CTRL:
                        self.agent.send_data(streams["stdin"], payload)
            if not exited.is_set():  # the caller went away: EOF (and a hang-up on a terminal)
                self.agent.send_data(streams["stdin"], b"")
                if process.terminal:
                    self.agent.call("signal", proc=name, signal=signal.SIGHUP)
        except (RunvError, OSError) as exc:
            logger.debug("exec %s: %s", name, exc)
        exited.wait()
        self.forget(name, streams)

    def forget(self, name: str, streams: dict) -> None:
        self.exits.pop(name, None)
        self.routes.pop(streams["stdout"], None)
        self.routes.pop(streams["stderr"], None)

    def forward_signal(self, signum: int) -> int | None:
        """Delivers a signal to the container process; before start a terminating signal
        stops the created container (as runc's kill of a created container does)."""
        if not self.started:
            return None if signum in BENIGN else 128 + signum
        try:
            self.agent.call("signal", proc=INIT, signal=signum)
        except AgentError as exc:
            logger.debug("signal %d not delivered: %s", signum, exc)
        return None

    # ---------------------------------------------------------------- streams

    def sink(self, fd: int) -> Callable[[bytes], None]:
        """Writes a stream to one of the container's host fds; once the caller closed its
        end, output is dropped, as a closed pipe would."""
        broken = False

        def write(data: bytes) -> None:
            nonlocal broken
            if not broken:
                try:
                    write_all(fd, data)
                except OSError:
                    broken = True

        return write

    def on_data(self, channel: int, payload: bytes) -> None:
        route = self.routes.get(channel)
        if route is not None and payload:
            route(payload)

    def on_agent_event(self, message: dict) -> None:
        if message["event"] == "exit" and message.get("proc") != INIT:
            handler = self.exits.get(message["proc"])
            if handler:
                handler(message)
            return
        self.events.put((message["event"], message))

    # ---------------------------------------------------------------- teardown

    def teardown(self, force: bool = False) -> None:
        """Stops the VM and detaches storage; safe to call with either missing."""
        if self.agent:
            self.agent.close()
        if self.handle:
            self.hooks.stop_vm(handle=self.handle, force=force)
        self.hooks.release_net(container=self.container)
        if self.attachment:
            self.hooks.detach_storage(container=self.container, attachment=self.attachment)
        volumes.release(self.container.state_dir)


def run(shim: Shim, report: Callable[[str], None]) -> int:
    """The shim process's whole life; returns its exit code."""
    cid = shim.container.id
    me = os.getpid()
    shim.store.update(cid, shim_pid=me, shim_start=process_start_time(me))
    try:
        shim.boot()
    except Exception as exc:  # noqa: BLE001 - every failure must reach `create` as one line
        message = str(exc) if isinstance(exc, RunvError) else f"internal error: {exc!r}"
        if not isinstance(exc, RunvError):
            logger.error("%s", traceback.format_exc())
        try:
            shim.teardown(force=True)
        finally:
            report(message)
        return 1
    try:
        code = shim.serve(report)
    except Exception:  # noqa: BLE001
        logger.error("shim of %s failed: %s", cid, traceback.format_exc())
        code = 255
    shim.store.update(cid, status="stopped", exit_code=code)
    logger.debug("container %s exited with %d", cid, code)
    shim.teardown()
    return code

"""The per-container shim: the process whose PID callers see as the container's.

It holds the container's guest, one of two kinds: its own VM (:class:`runv.shim.ownvm.OwnVM`,
over a :class:`runv.vm.machine.Machine`) or, for a pod member, a reference to the VM of
its pod's sandbox (:class:`runv.shim.member.PodMember`). Whichever it holds, the shim
relays the container's stdio, forwards the signals it receives to the container process,
serves the CLI over a control socket (one request a line, answered by :attr:`Shim.ops`),
tears the guest down when the container exits, and exits with the container's exit code
(128+N when killed by signal N).
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

from runv import console
from runv.api.errors import RunvError
from runv.api.process import process_start_time
from runv.api.spec import ConsoleSize
from runv.log import logger
from runv.records import NoSuchContainer
from runv.shim import control
from runv.shim.control import NOT_FORWARDED, exit_code
from runv.shim.outbox import Outbox
from runv.stdio import write_all
from runv.vm import mountns, pidns
from runv.vm.machine import INIT
from runv.vm.ocihooks import run_hooks
from runv.vm.spawn import OK

if TYPE_CHECKING:
    from runv.api.container import Container
    from runv.loader import Selection
    from runv.records import Store
    from runv.settings import Settings

BENIGN = {signal.SIGCONT, signal.SIGWINCH, signal.SIGCHLD, signal.SIGURG}  # do not stop a created container
REPLY_GRACE = 10.0  # seconds an exiting shim waits to answer requests in flight
CLOSED_CODE = 255  # the exit code when the VM closes the agent channel without an exit
KILLED_CODE = 128 + signal.SIGKILL  # the exit code of a container the host killed
CONSOLE_CAP = 8 << 20  # bytes of console.log (the guest writes it) before it is cut to its tail
CONSOLE_KEEP = 1 << 20  # bytes of its tail kept in console.log.1 when it is cut
CONSOLE_CHECK = 1.0  # seconds between looks at its size


class Shim:
    def __init__(self, settings: Settings, store: Store, container: Container, plugins: Selection,
                 console_socket: Path | None = None, sandbox: str = "") -> None:
        from runv.shim.member import PodMember
        from runv.shim.ownvm import OwnVM

        self.settings = settings
        self.store = store
        self.container = container
        self.events: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.started = False
        self.killed = False  # SIGKILL: the host stopped the VM (or the member's processes); the guest is not asked
        self.console_socket = console_socket
        self.stdio = (0, 1, 2)  # the container's stdio on the host: the caller's, or a pty slave
        self.answering = threading.Condition()  # counts control requests not yet answered
        self.unanswered = 0
        self.outboxes: list[Outbox] = []  # the container's output streams, drained by threads of their own
        self.guest = PodMember(self, plugins, sandbox) if sandbox else OwnVM(self, plugins)
        self.ops: dict[str, Callable[[dict], dict | None]] = {
            "start": self.start, "signal": self.signal, "ps": self.guest.ps, "stats": self.guest.stats,
            "update": self.guest.update, "freeze": self.guest.freeze, **self.guest.pod_ops(),
        }

    def boot(self) -> None:
        """The container's guest made ready (:meth:`OwnVM.boot`, :meth:`PodMember.boot`), its
        terminal opened, its create hooks run."""
        self.guest.boot()
        if self.container.spec.process.terminal:
            self.open_terminal()
        state = self.store.read(self.container.id).oci_state()
        for kind in ("createRuntime", "createContainer", "prestart"):
            run_hooks(self.container.spec, kind, state.evolve(status="creating" if kind == "createRuntime" else "created"), fatal=True)
        self.guest.booted()

    def open_terminal(self) -> None:
        """The container's pty: its master goes to the console socket, its slave becomes
        the shim's controlling terminal, so resizes arrive here as SIGWINCH."""
        size = self.container.spec.process.console_size
        master, slave = console.open_pty(size.height, size.width) if size else console.open_pty()
        console.take_controlling_tty(slave)
        console.send_master(self.console_socket, master)
        console.stdio_to(slave)  # containerd reads create's output until EOF: let go of it
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
        signum = self.guest.vmm_killed_by()
        if signum is not None:
            logger.error("container %s: its VMM was killed by signal %d", self.container.id, signum)
            return 128 + signum
        logger.error("container %s: %s", self.container.id, reason)
        return CLOSED_CODE

    def accept_loop(self, server: socket.socket) -> None:
        while conn := server.accept()[0]:
            threading.Thread(target=self.handle_client, args=(conn,), daemon=True).start()

    def handle_client(self, conn: socket.socket) -> None:
        with conn:
            request, fds = read_request(conn)
            try:
                if request.get("op") == "exec":
                    return self.guest.serve_exec(conn, request)
                with self.answering:
                    self.unanswered += 1
                try:
                    reply = self.answer({**request, "fds": fds})  # the descriptors received, never the caller's word
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass  # the caller went away
                finally:
                    with self.answering:
                        self.unanswered -= 1
                        self.answering.notify_all()
            finally:
                for fd in fds:  # an operation keeps none: what it mounted holds what it needs
                    os.close(fd)

    def answer(self, request: dict) -> dict:
        """The reply to one control request (never raises)."""
        try:
            handler = self.ops.get(str(request.get("op", "")))
            if handler is None:
                raise RunvError(f"unknown shim operation {request.get('op')!r}")
            return {"ok": True, **(handler(request) or {})}
        except RunvError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the CLI must get an answer
            logger.error("shim: %s", traceback.format_exc())
            return {"error": f"internal error in the shim: {exc}"}

    # ---------------------------------------------------------------- the container's process

    def start(self, request: dict) -> None:
        """Starts the container's process (``runv start``), sized to its terminal now."""
        with self.lock:
            if self.started:
                raise RunvError(f"cannot start an already running container {self.container.id}")
            process = self.container.spec.process
            if process.terminal:  # the caller may have resized the pty since create
                rows, cols = console.get_winsize(self.stdio[0])
                if rows and cols:
                    process = process.evolve(console_size=ConsoleSize(height=rows, width=cols))
            self.guest.launch(process)
            self.started = True
            record = self.store.update(self.container.id, status="running")
        # the status the shim knows: a record's live status checks host PIDs, which its own PID namespace lacks
        run_hooks(self.container.spec, "poststart", record.oci_state().evolve(status="running"), fatal=False)

    def signal(self, request: dict) -> None:
        """``runv kill``: a signal for the container process (or, with ``all``, every one of its processes)."""
        signum = request.get("signal")
        if type(signum) is not int or signum not in signal.valid_signals():
            raise RunvError(f"invalid signal {signum!r}")
        self.guest.signal(signum, bool(request.get("all")))

    def forward_signal(self, signum: int) -> int | None:
        """Delivers a signal the shim received to the container process; before start a
        terminating signal stops the created container (as runc's kill of a created container does)."""
        if not self.started:
            return None if signum in BENIGN else 128 + signum
        self.guest.forward(signum)
        return None

    def resize(self) -> None:
        """Passes the pty's new window size to the container process (SIGWINCH in the guest)."""
        if self.started and self.container.spec.process.terminal:
            self.guest.resize()

    def sink(self, fd: int) -> Callable[[bytes], None]:
        """Writes a stream to one of the container's host fds, from a bounded outbox with a
        thread of its own (a slow reader never holds up the agent channel); once the caller
        closed its end, output is dropped, as a closed pipe would."""
        outbox = Outbox(lambda data: write_all(fd, data), f"container {self.container.id} fd {fd}")
        self.outboxes.append(outbox)
        return outbox.put

    def teardown(self, force: bool = False) -> None:
        """The container's last output to its stdout first, then its guest taken down."""
        for outbox in self.outboxes:
            outbox.finish(timeout=2.0)
        self.guest.teardown(force)


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


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request line (``{}`` when it is not a JSON object) and the descriptors sent with
    it. Nothing follows a request before its reply, so reading past the line loses nothing."""
    try:
        data, fds, _flags, _address = socket.recv_fds(conn, 1 << 16, control.MAX_FDS)
    except OSError:
        return {}, []
    while data and not data.endswith(b"\n"):
        more = conn.recv(1 << 16)
        if not more:
            break
        data += more
    try:
        request = json.loads(data or b"{}")
    except ValueError:
        request = {}
    return (request if isinstance(request, dict) else {}), fds


def run(shim: Shim, report: Callable[[str], bool]) -> int:
    """The shim process's whole life; returns its exit code. Its first act is to record
    itself under the container's lock, so a concurrent ``delete --force`` either finds it
    (and kills it with all it starts) or removed the container first (nothing is built)."""
    cid = shim.container.id
    # a member of an earlier runv's pod stayed in its caller's mount namespace; that pod's shim reads its
    # record, and knows no protocol: it records none (and takes ARGS execs in the older form as well)
    protocol = control.PROTOCOL if mountns.left() else 0
    try:
        shim.store.update(cid, shim_pid=pidns.own_pid(), shim_start=process_start_time(os.getpid()), shim_protocol=protocol)
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

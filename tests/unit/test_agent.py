"""The guest agent and the host client over a socketpair, a unix socket (``--socket``
mode) and, where the host has vsock loopback, vsock: the same code as in the VM, without
the VM (processes run on the host, without chroot)."""

import contextlib
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from runv.agent.__main__ import parse_args
from runv.agent.channel import find_port, listen_vsock, serial_channel, vsock_port
from runv.agent.loop import Agent
from runv.agent.oomwatch import OomWatch
from runv.agent.protocol import CTRL, DATA, VERSION, FrameReader, ProtocolError, encode_ctrl, encode_data
from runv.api.errors import AgentError
from runv.api.sockets import connect_unix
from runv.testing import alive
from runv.vm.agentclient import AgentClient
from runv_kvmtool import relay as relay_module

VMADDR_CID_LOCAL = 1  # socket.VMADDR_CID_LOCAL from Python 3.12 on


class Peer:
    """A connected client that records streams and events; ``stop()`` ends the agent."""

    def __init__(self, sock, pid, stop):
        self.pid = pid
        self.stop = stop
        self.output: dict[int, bytearray] = {}
        self.eof: set[int] = set()
        self.exits: dict[str, dict] = {}
        self.exited = threading.Condition()
        self.client = AgentClient(sock, self.on_data, self.on_event)
        assert self.client.ready.wait(10)

    @classmethod
    def forked(cls, serve=lambda fd: Agent(fd, rootfs="/").run()):
        """An agent forked on one end of a socketpair."""
        host, guest = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            host.close()
            try:
                serve(guest.detach())
            finally:
                os._exit(0)
        guest.close()
        return cls(host, pid, lambda: os.waitpid(pid, 0))

    def on_data(self, channel, payload):
        if payload:
            self.output.setdefault(channel, bytearray()).extend(payload)
        else:
            self.eof.add(channel)

    def on_event(self, message):
        if message["event"] == "exit":
            with self.exited:
                self.exits[message["proc"]] = message
                self.exited.notify_all()

    def wait_exit(self, name, timeout=10):
        with self.exited:
            assert self.exited.wait_for(lambda: name in self.exits, timeout)
        return self.exits[name]

    def close(self):
        self.client.close()
        self.stop()


@pytest.fixture
def peer():
    p = Peer.forked()
    yield p
    p.close()


def exec_(peer, name, args, base=0, **extra):
    streams = {"stdin": base + 1, "stdout": base + 2, "stderr": base + 3}
    return peer.client.call("exec", proc=name, args=args, env=["PATH=/usr/bin:/bin"], streams=streams, **extra)


def test_frames_round_trip_in_pieces():
    wire = encode_ctrl({"op": "ping", "id": 1}) + encode_data(7, b"x" * 10) + encode_data(7, b"")
    reader = FrameReader()
    frames = []
    for byte in range(len(wire)):
        frames += reader.feed(wire[byte : byte + 1])
    assert frames == [(CTRL, 0, {"op": "ping", "id": 1}), (DATA, 7, b"x" * 10), (DATA, 7, b"")]
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"\x09" + b"\0" * 8)


def test_ready_names_the_kernel(peer):
    assert peer.client.ready_info["kernel"] == os.uname().release
    assert peer.client.call("ping")["ok"] is True


def test_output_stderr_and_exit_code(peer):
    exec_(peer, "init", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert peer.wait_exit("init")["code"] == 3
    assert peer.output[2] == b"out\n" and peer.output[3] == b"err\n"
    assert {2, 3} <= peer.eof


def test_stdin_round_trip_one_mebibyte(peer):
    exec_(peer, "cat", ["cat"])
    data = os.urandom(1 << 20)
    peer.client.send_data(1, data)
    peer.client.send_data(1, b"")
    assert peer.wait_exit("cat")["code"] == 0
    assert bytes(peer.output[2]) == data


def test_killed_process_reports_its_signal(peer):
    exec_(peer, "sleeper", ["sleep", "30"])
    peer.client.call("signal", proc="sleeper", signal=9)
    assert peer.wait_exit("sleeper") == {"event": "exit", "proc": "sleeper", "signal": 9}


def test_concurrent_processes_keep_their_own_streams(peer):
    for n in range(5):
        exec_(peer, f"p{n}", ["sh", "-c", f"echo {n}"], base=10 * n)
    for n in range(5):
        peer.wait_exit(f"p{n}")
        assert peer.output[10 * n + 2] == f"{n}\n".encode()


def test_refusals_are_errors(peer):
    with pytest.raises(AgentError, match='exec: "/no/such": executable file not found'):
        exec_(peer, "x", ["/no/such"])
    with pytest.raises(AgentError, match="unknown operation"):
        peer.client.call("frobnicate")
    with pytest.raises(AgentError, match="not running"):
        peer.client.call("signal", proc="ghost", signal=15)


def test_tty_process_sees_its_window_size(peer):
    exec_(peer, "t", ["sh", "-c", "stty size"], tty=True, rows=33, cols=101)
    assert peer.wait_exit("t")["code"] == 0
    assert b"33 101" in peer.output[2]


def test_ps_lists_processes(peer):
    exec_(peer, "s", ["sleep", "30"])
    pids = [p["pid"] for p in peer.client.call("ps")["processes"]]
    peer.client.call("signal", proc="s", signal=15)
    peer.wait_exit("s")
    assert pids and peer.pid not in pids


def test_stats_report_cpu_memory_pids(peer):
    stats = peer.client.call("stats")
    assert stats["cpu"]["total"] > 0 and len(stats["cpu"]["percpu"]) == os.cpu_count()
    assert 0 < stats["memory"]["usage"] < stats["memory"]["limit"]
    assert stats["pids"] >= 1 and stats["oom_kills"] >= 0


def test_signal_all_off_pid_1_reaches_only_the_agents_processes(peer):
    exec_(peer, "a", ["sleep", "30"])
    exec_(peer, "b", ["sleep", "30"], base=10)
    peer.client.call("signal", all=True, signal=15)
    assert peer.wait_exit("a")["signal"] == 15 and peer.wait_exit("b")["signal"] == 15


# ---------------------------------------------------------------- channel selection


def test_channel_is_picked_from_the_kernel_command_line():
    assert serial_channel(["quiet", "runv.agent=/dev/ttyS1"]) == "/dev/ttyS1"
    assert serial_channel(["quiet"]) is None and vsock_port(["quiet"]) is None
    assert vsock_port(["console=ttyS0", "runv.agent=vsock:1024", "quiet"]) == 1024
    assert serial_channel(["runv.agent=vsock:1024"]) is None  # vsock is not a tty
    assert vsock_port(["runv.agent=/dev/hvc1"]) is None
    for bad in ("vsock:", "vsock:x", "vsock:0", "vsock:-5", f"vsock:{1 << 32}"):
        with pytest.raises(SystemExit, match="bad vsock port"):
            vsock_port([f"runv.agent={bad}"])


def test_virtio_serial_port_is_found_by_name(tmp_path):
    for port, name in (("vport0p1", "org.qemu.guest_agent.0"), ("vport0p2", "org.runv.agent")):
        (tmp_path / port).mkdir()
        (tmp_path / port / "name").write_text(name + "\n")
    dev = tmp_path / "dev"
    dev.mkdir()
    with pytest.raises(SystemExit, match="no virtio-serial port named org.runv.agent"):
        find_port(str(tmp_path), timeout=0.1, dev=str(dev))  # named, but its /dev node is not there yet
    (dev / "vport0p2").touch()
    assert find_port(str(tmp_path), dev=str(dev)) == f"{dev}/vport0p2"
    (tmp_path / "vport0p2" / "name").write_text("other\n")
    with pytest.raises(SystemExit, match="no virtio-serial port named org.runv.agent"):
        find_port(str(tmp_path), timeout=0.1, dev=str(dev))


def test_agent_over_a_serial_tty_through_kvmtools_relay(tmp_path):
    """kvmtool's agent path without kvmtool: the guest agent on one end of a pty (as on
    ttyS1), kvmtool's relay serving the other end at a unix socket, a host client pinging."""
    master, slave = pty.openpty()
    # raw before the agent speaks, as the relay has it long before a guest boots: a new pty
    # echoes, and what the agent wrote while the relay was starting came back to it mangled
    relay_module.raw(slave)
    agent = Agent(master, rootfs="/", is_port=True)
    threading.Thread(target=agent.run, daemon=True).start()
    sock = tmp_path / "agent.sock"
    relay = subprocess.Popen([sys.executable, "-m", "runv_kvmtool.relay", os.ttyname(slave), str(sock)])
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        client = AgentClient.connect(str(sock), lambda *a: None, lambda m: None, timeout=10, alive=lambda: None)
        assert client.ready_info["pid"] == os.getpid()
        assert client.call("ping") is not None
        client.close()
    finally:
        relay.kill()
        relay.wait()
        agent.running = False


def test_command_line_options():
    assert parse_args([]) == {"socket": None, "rootfs": None, "private": None, "debug": False}
    assert parse_args(["--socket", "/s", "--rootfs=/r", "--debug"]) == {"socket": "/s", "rootfs": "/r", "private": None, "debug": True}
    assert parse_args(["--socket", "/s", "--rootfs", "/r", "--private", "/p"])["private"] == "/p"
    for bad in (["--socket", "/s"], ["--rootfs", "/r"], ["--socket"], ["--frobnicate"], ["extra"], ["--private", "/p"]):
        with pytest.raises(SystemExit, match="runv-agent"):
            parse_args(bad)


# ---------------------------------------------------------------- --socket mode


@pytest.fixture
def socket_agent(tmp_path):
    """``python -m runv.agent --socket P --rootfs /`` as a host process: (socket path, Popen)."""
    path = str(tmp_path / "agent.sock")
    proc = subprocess.Popen([sys.executable, "-m", "runv.agent", "--socket", path, "--rootfs", "/"])
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, "the agent did not listen"
        time.sleep(0.02)
    yield path, proc
    if proc.poll() is None:
        proc.terminate()
    assert proc.wait(10) == 0
    assert not os.path.exists(path)


def connect(path, pid):
    return Peer(connect_unix(path), pid, lambda: None)


def test_socket_mode_runs_the_real_agent_as_a_host_process(socket_agent):
    path, proc = socket_agent
    first = connect(path, proc.pid)
    assert first.client.ready_info == {"event": "ready", "pid": proc.pid, "kernel": os.uname().release, "protocol": VERSION}
    assert first.client.call("ping")["pid"] == proc.pid
    exec_(first, "hi", ["echo", "hi"])
    assert first.wait_exit("hi") == {"event": "exit", "proc": "hi", "code": 0}
    assert first.output[2] == b"hi\n" and {2, 3} <= first.eof
    exec_(first, "sleeper", ["sleep", "30"], base=10)
    first.close()
    # The agent goes back to accepting; its processes outlive the connection.
    second = connect(path, proc.pid)
    assert second.client.ready_info["pid"] == proc.pid
    second.client.call("signal", proc="sleeper", signal=9)
    assert second.wait_exit("sleeper")["signal"] == 9
    with contextlib.suppress(AgentError):  # the channel closes as the agent exits, as a VM's does
        second.client.call("poweroff", timeout=10)
    assert proc.wait(10) == 0
    second.close()


def test_socket_mode_ends_its_processes_on_sigterm(socket_agent):
    path, proc = socket_agent
    peer = connect(path, proc.pid)
    pid = exec_(peer, "sleeper", ["sleep", "30"])["pid"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, "the agent's process outlived it"
        time.sleep(0.02)
    peer.close()


# ---------------------------------------------------------------- vsock


def vsock_loopback_port() -> int:
    """A vsock port that loopback connections reach on this host, or pytest.skip with the reason."""
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("this Python has no AF_VSOCK")
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "vsock_loopback"], capture_output=True)
    port = 20000 + os.getpid() % 20000
    try:
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as server:
            server.bind((socket.VMADDR_CID_ANY, port))
            server.listen(1)
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as probe:
                probe.settimeout(2)
                probe.connect((VMADDR_CID_LOCAL, port))
    except OSError as exc:
        pytest.skip(f"vsock loopback does not work on this host (the vsock_loopback module is needed): {exc}")
    return port + 1  # a fresh port for the agent itself


def test_vsock_channel_serves_a_host_connection():
    port = vsock_loopback_port()
    pid = os.fork()
    if pid == 0:
        try:
            Agent(listen_vsock(port), rootfs="/").run()
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while True:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            try:
                sock.connect((VMADDR_CID_LOCAL, port))
                break
            except OSError:
                sock.close()
                assert time.monotonic() < deadline, "the agent did not listen on vsock"
                time.sleep(0.05)
        peer = Peer(sock, pid, lambda: None)
        assert peer.client.ready_info["pid"] == pid
        exec_(peer, "hi", ["echo", "hi"])
        assert peer.wait_exit("hi")["code"] == 0 and peer.output[2] == b"hi\n"
        peer.close()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_the_inits_mount_plan_is_the_specs_order_after_runvs_defaults():
    from runv.agent.errors import RequestError as GuestError
    from runv.agent.rootfs import mount_plan

    spec = [{"destination": "/data/", "type": "none", "source": "/srv", "options": ["rbind", "ro"]},
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/data", "type": "bind", "source": "/srv2"}]
    binds = [{"target": "/data", "source": "/run/runv/binds/0"}, {"target": "/data", "source": "/run/runv/binds/1"}]
    plan = mount_plan(spec, binds)
    assert [(m["destination"], m["type"], m["source"]) for m in plan] == [
        ("/sys", "sysfs", "sysfs"), ("/dev", "tmpfs", "tmpfs"), ("/dev/pts", "devpts", "devpts"), ("/dev/shm", "tmpfs", "shm"),
        ("/data", "bind", "/run/runv/binds/0"), ("/proc", "proc", "proc"), ("/sys/fs/cgroup", "cgroup2", "cgroup"),
        ("/data", "bind", "/run/runv/binds/1")]  # each bind takes the next staged source at its destination
    assert plan[4]["where"] == "mounts[0] /data" and plan[0]["where"] == "runv's /sys"
    with pytest.raises(GuestError, match=r"mounts\[3\]: no staged source for the bind mount at /data"):
        mount_plan(spec, binds[:1])


def test_mount_options_split_into_flags_data_and_propagation():
    from runv.agent.mounts import parse_options

    flags, data, propagation = parse_options(["nosuid", "ro", "size=1m", "mode=700", "rshared", "tmpcopyup", "newinstance"])
    assert flags == 1 | 2 and data == "size=1m,mode=700,newinstance"
    assert propagation == [(1 << 20) | 16384]  # MS_SHARED | MS_REC; tmpcopyup (a runtime word) is dropped
    assert parse_options("bind,nodev") == (4096 | 4, "", [])


def test_a_missing_mount_point_is_a_file_for_a_bind_of_anything_but_a_directory(tmp_path):
    """runc's rule, which the host's read-only rootfs path follows too (runv.vm.mountpoints)."""
    from runv.agent.mounts import rootfs_path

    (tmp_path / "data").mkdir()
    (tmp_path / "file").write_text("x")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    for target, source in (("/dev/null-here", "/dev/null"), ("/etc/hosts", str(tmp_path / "file")), ("/data", str(tmp_path / "data"))):
        made = rootfs_path(str(rootfs), target, {"fstype": "bind", "source": source})
        assert made == str(rootfs) + target
        assert os.path.isdir(made) == (source == str(tmp_path / "data")) and os.path.exists(made), target
    assert os.path.isdir(rootfs_path(str(rootfs), "/proc", {"fstype": "proc", "source": "proc"}))


def test_oom_kills_in_a_containers_cgroup_are_sent_once_each(tmp_path):
    """The agent's half of OOM reporting (:mod:`runv.agent.oomwatch`) over a cgroup's
    ``memory.events`` as a file: an ``oom`` event each time its ``oom_kill`` count rises."""
    sent = []
    watch = OomWatch(lambda frame: sent.extend(FrameReader().feed(frame)))
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")  # kills before the watch began are not news
    confined = {"c1": SimpleNamespace(cgroup=str(tmp_path)), "nocg": SimpleNamespace(cgroup=None)}
    watch.sync(confined)
    watch.check()
    assert sent == [] and list(watch.watched) == ["c1"]
    events.write_text("low 0\nhigh 0\nmax 5\noom 3\noom_kill 3\n")
    watch.check()
    watch.check()
    assert sent == [(CTRL, 0, {"event": "oom", "container": "c1"})]
    fd = watch.watched["c1"][0]
    watch.sync({})  # the container was removed: its file is let go
    assert watch.watched == {} and not watch.owns(fd)

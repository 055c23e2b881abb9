"""The guest agent and the host client over a socketpair: the same code as in the VM,
without the VM (processes run on the host, without chroot)."""

import os
import socket
import threading

import pytest

from runv.agent.guest import Agent
from runv.agent.host import AgentClient, AgentError
from runv.agent.protocol import CTRL, DATA, FrameReader, ProtocolError, encode_ctrl, encode_data


class Peer:
    """A forked agent and a connected client that records streams and events."""

    def __init__(self):
        host, guest = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            host.close()
            try:
                Agent(guest.detach(), rootfs="/").run()
            finally:
                os._exit(0)
        guest.close()
        self.output: dict[int, bytearray] = {}
        self.eof: set[int] = set()
        self.exits: dict[str, dict] = {}
        self.exited = threading.Condition()
        self.client = AgentClient(host, self.on_data, self.on_event)
        assert self.client.ready.wait(10)

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
        os.waitpid(self.pid, 0)


@pytest.fixture
def peer():
    p = Peer()
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

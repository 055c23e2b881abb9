"""Guest bytes checked in-process: the frame reader, the message schema, escaping, the
console log's cap and tail (the whole-shim cases are in test_hostile_agent.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from runv.agent.protocol import CTRL, HEADER, FrameReader, ProtocolError, encode_ctrl
from runv.api.tools import last_words
from runv.shim.server import cap_console
from runv.vm.agentclient import GuestProtocolError, check_message, check_reply, printable


def ctrl(payload: bytes) -> bytes:
    return HEADER.pack(CTRL, 0, len(payload)) + payload


@pytest.mark.parametrize("payload", [b"[" * 50000 + b"]" * 50000, b'{"a":' * 40 + b"1" + b"}" * 40, b"[1]", b'"x"', b"{bad"])
def test_bad_control_frames_are_protocol_errors(payload):
    with pytest.raises(ProtocolError):
        FrameReader().feed(ctrl(payload))


def test_brackets_inside_strings_do_not_count_as_nesting():
    message = {"s": "[" * 100 + '\\"{' * 50}
    assert FrameReader().feed(encode_ctrl(message)) == [(CTRL, 0, message)]


def test_good_frames_before_a_bad_one_are_delivered_first():
    reader = FrameReader()
    frames = reader.feed(encode_ctrl({"id": 1, "ok": True}) + ctrl(b"[]"))
    assert frames == [(CTRL, 0, {"id": 1, "ok": True})] and reader.failed
    with pytest.raises(ProtocolError):
        reader.feed(b"")


@pytest.mark.parametrize("message", [
    {"event": "exit", "proc": "init", "code": "x"}, {"event": "exit", "proc": "init", "code": 256},
    {"event": "exit", "proc": "init", "code": True}, {"event": "exit", "proc": "init", "signal": 65},
    {"event": "exit", "proc": "init", "signal": 0}, {"event": "exit", "code": 0},
    {"event": "exit", "proc": ["init"], "code": 0}, {"event": "exit", "proc": "init", "code": 0, "signal": 9},
    {"event": "exit", "proc": "init"}, {"event": "surprise"}, {"event": 1},
    {"event": "oom"}, {"event": "oom", "container": 1}, {"event": "oom", "container": "x" * 1025},
    {"id": [1], "ok": True}, {"id": 1}, {"id": 1, "ok": 1}, {"id": 1, "error": 5}, {},
])
def test_messages_outside_the_schema_are_refused(message):
    with pytest.raises(GuestProtocolError):
        check_message(message)


def test_messages_inside_the_schema_pass():
    for message in ({"event": "ready", "x": 1}, {"event": "exit", "proc": "exec-1", "code": 255},
                    {"event": "exit", "proc": "init", "signal": 64}, {"event": "oom", "container": "c1"},
                    {"id": 3, "ok": True}, {"id": 3, "error": "no"}):
        check_message(message)


def test_replies_are_checked_and_ps_strings_escaped():
    with pytest.raises(GuestProtocolError):
        check_reply("exec", {"id": 1, "ok": True, "pid": -1})
    with pytest.raises(GuestProtocolError):
        check_reply("ps", {"id": 1, "ok": True, "processes": [{"pid": "1", "cmd": "x"}]})
    reply = check_reply("ps", {"id": 1, "ok": True, "processes": [{"pid": 1, "cmd": "a\nb\x1b[2J"}]})
    assert reply["processes"] == [{"pid": 1, "cmd": "a\\nb\\x1b[2J"}]


def test_printable_escapes_and_cuts():
    assert printable("ok line") == "ok line"
    assert printable("x\ny\r\x00") == "x\\ny\\r\\x00"
    assert len(printable("a" * 10000)) == 4096


def test_last_words_reads_only_the_tail_escaped(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"early\n" + b"x" * (1 << 20) + b"\nlast \x1b[31mred\n")
    words = last_words(log)
    assert "early" not in words and words.endswith("last \\x1b[31mred")


def test_the_console_log_is_capped(tmp_path):
    log = tmp_path / "console.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as QEMU appends
    threading.Thread(target=cap_console, args=(log, 4096, 1024, 0.01), daemon=True).start()
    try:
        for _ in range(200):
            os.write(fd, b"y" * 100)
            time.sleep(0.001)
        os.write(fd, b"END")
        time.sleep(0.1)
    finally:
        os.close(fd)
    assert log.stat().st_size <= 4096 + 200 * 100 // 10
    assert log.read_bytes().endswith(b"END")
    assert (tmp_path / "console.log.1").stat().st_size == 1024

"""Container records, ids and signals: the parts the fast commands use."""

import os

import pytest

from runv.api.errors import RunvError
from runv.api.process import process_start_time
from runv.runtime.verbs import parse_signal
from runv.state import Record, Store, validate_id


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a..b", "-x", "a b"])
def test_bad_ids_are_refused(bad):
    with pytest.raises(RunvError):
        validate_id(bad)


def test_good_ids():
    assert validate_id("0123abc_x.y-z") == "0123abc_x.y-z"


@pytest.mark.parametrize("text, number", [("9", 9), ("KILL", 9), ("SIGKILL", 9), ("term", 15), ("sigusr1", 10)])
def test_signals(text, number):
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["NOPE", "0", "999", ""])
def test_bad_signals(text):
    with pytest.raises(RunvError, match="invalid signal"):
        parse_signal(text)


def test_record_round_trip_and_live_status(tmp_path):
    store = Store(tmp_path)
    store.claim("c1")
    me = os.getpid()
    store.write(Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now", status="running", shim_pid=me, shim_start=process_start_time(me)))
    assert store.read("c1").live_status() == "running"
    record = store.update("c1", shim_start=1)  # another process that reused the PID
    assert record.live_status() == "stopped"
    assert record.oci_state().to_json()["pid"] == 0
    with pytest.raises(RunvError, match="already exists"):
        store.claim("c1")
    assert store.ids() == ["c1"]
    store.remove("c1")
    with pytest.raises(RunvError, match="container c1 does not exist"):
        store.read("c1")


def test_zombie_is_not_alive():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        while True:  # wait until it is a zombie
            with open(f"/proc/{pid}/stat", "rb") as f:
                if b") Z" in f.read():
                    break
        assert process_start_time(pid) is None
    finally:
        os.waitpid(pid, 0)

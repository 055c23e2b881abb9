"""Container records, ids and signals: the parts the fast commands use."""

import os
import subprocess
import threading
import time

import pytest

from runv.api.errors import RunvError
from runv.api.process import process_start_time
from runv.records import NoSuchContainer, Record, Store, validate_id
from runv.verbs.lifecycle import parse_signal


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
    me = os.getpid()
    store.claim(Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now"))
    store.write(Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now", status="running", shim_pid=me, shim_start=process_start_time(me)))
    assert store.read("c1").live_status() == "running"
    record = store.update("c1", shim_start=1)  # another process that reused the PID
    assert record.live_status() == "stopped"
    assert record.oci_state().to_json()["pid"] == 0
    with pytest.raises(RunvError, match="already exists"):
        store.claim(Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now"))
    assert store.ids() == ["c1"]
    store.remove("c1")
    with pytest.raises(NoSuchContainer, match="container c1 does not exist"):
        store.read("c1")


def test_a_claim_appears_with_its_record_and_a_dead_claim_is_swept(tmp_path):
    store = Store(tmp_path)
    stale = tmp_path / ".claim-999999999-1-c1"  # a create killed between mkdir and rename
    stale.mkdir()
    (stale / "state.json").write_text("{}")
    assert store.ids() == []
    path = store.claim(Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now"))
    assert store.read("c1").status == "creating" and path == tmp_path / "c1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1"]


def test_creating_is_stopped_once_neither_its_create_nor_its_shim_runs(tmp_path):
    me = os.getpid()
    record = Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now", creator_pid=me, creator_start=process_start_time(me))
    assert record.live_status() == "creating"
    assert record.evolve(creator_start=1).live_status() == "stopped"
    assert record.evolve(creator_start=1, shim_pid=me, shim_start=process_start_time(me)).live_status() == "creating"


def test_a_lock_waiter_learns_that_the_container_went_meanwhile(tmp_path):
    store = Store(tmp_path)
    store.claim(Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now"))
    waited = []

    def wait():
        try:
            with store.locked("c1"):
                waited.append("locked")
        except NoSuchContainer as exc:
            waited.append(str(exc))

    with store.locked("c1"):
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        store.remove("c1")
    waiter.join(5)
    assert waited == ["container c1 does not exist"]


def test_remove_refuses_a_directory_with_a_mount_under_it(tmp_path):
    store = Store(tmp_path)
    path = store.claim(Record(id="c1", bundle="/b", rootfs="/b/rootfs", created="now"))
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "precious").write_text("keep")
    (path / "mnt").mkdir()
    subprocess.run(["mount", "--bind", str(volume), str(path / "mnt")], check=True)
    try:
        with pytest.raises(RunvError, match=f"{path}/mnt is still mounted"):
            store.remove("c1")
    finally:
        subprocess.run(["umount", str(path / "mnt")], check=True)
    assert (volume / "precious").read_text() == "keep"
    store.remove("c1")
    assert not path.exists()


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

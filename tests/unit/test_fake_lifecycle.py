"""Whole containers through the real ``runv`` CLI, shim and agent, on the fake VMM: the
runc lifecycle in seconds, with no QEMU (the container's processes are host processes
in the agent's mount namespace)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from runv.shim import control
from runv.testing.fakevmm import FakeVM


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def status(fake, cid):
    result = fake("state", cid, check=True)
    return json.loads(result.stdout)["status"]


def test_run_prints_the_output_and_exits_with_the_code(fake, make_bundle):
    bundle = make_bundle(["sh", "-c", "echo out; echo err >&2; echo $(hostname); exit 7"])
    result = fake("run", "--bundle", bundle, "box")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\nrunv-test\n", "err\n")
    assert fake("list", "-q").stdout == ""  # run deletes the container; no line at all, as runc prints none


def test_the_container_sees_its_rootfs_and_the_host_keeps_its_hostname(fake, make_bundle):
    before = os.uname().nodename
    bundle = make_bundle(["sh", "-c", "cat /marker; ls /dev/null /proc/self >/dev/null && echo ok"])
    (bundle / "rootfs" / "marker").write_text("from the bundle\n")
    result = fake("run", "--bundle", bundle, "box")
    assert (result.returncode, result.stdout) == (0, "from the bundle\nok\n"), result.stderr
    assert os.uname().nodename == before


def test_writes_land_in_the_bundle(fake, make_bundle):
    bundle = make_bundle(["sh", "-c", "echo written > /tmp/out"])
    assert fake("run", "--bundle", bundle, "box").returncode == 0
    assert (bundle / "rootfs/tmp/out").read_text() == "written\n"


def test_a_readonly_rootfs_refuses_writes(fake, make_bundle):
    bundle = make_bundle(["sh", "-c", "touch /x"], readonly=True)
    assert fake("run", "--bundle", bundle, "box").returncode != 0
    assert not (bundle / "rootfs/x").exists()


def test_create_start_state_exec_kill_delete(fake, make_bundle, tmp_path, root):
    bundle = make_bundle(["sh", "-c", "echo started > /tmp/started; exec sleep 1000"])
    pid_file = tmp_path / "pid"
    created = fake("create", "--bundle", bundle, "--pid-file", pid_file, "box")
    assert created.returncode == 0, created.stderr
    state = json.loads(fake("state", "box", check=True).stdout)
    assert state["status"] == "created" and state["pid"] == int(pid_file.read_text())
    assert not (bundle / "rootfs/tmp/started").exists()  # not before start
    record = json.loads((root / "box/state.json").read_text())
    assert record["shim_protocol"] == control.PROTOCOL  # what a later runv reads to talk to this shim

    fake("start", "box", check=True)
    assert status(fake, "box") == "running"
    wait_for(lambda: (bundle / "rootfs/tmp/started").exists(), what="the container process")

    result = fake("exec", "box", "sh", "-c", "cat /tmp/started; exit 3")
    assert (result.returncode, result.stdout) == (3, "started\n"), result.stderr
    assert "sleep 1000" in fake("ps", "box", check=True).stdout

    refused = fake("delete", "box")
    assert refused.returncode == 1 and "not stopped" in refused.stderr

    fake("kill", "box", "KILL", check=True)
    wait_for(lambda: status(fake, "box") == "stopped", what="stopped")
    fake("delete", "box", check=True)
    assert "does not exist" in fake("state", "box").stderr


def test_pause_freezes_every_process_and_resume_thaws_them(fake, make_bundle):
    bundle = make_bundle(["sh", "-c", "while true; do date +%s%N > /tmp/tick; sleep 0.05; done"])
    fake("run", "-d", "--bundle", bundle, "box", check=True)
    tick = bundle / "rootfs/tmp/tick"
    wait_for(tick.exists, what="the first tick")

    fake("pause", "box", check=True)
    assert status(fake, "box") == "paused"
    frozen = tick.read_text()
    time.sleep(0.3)
    assert tick.read_text() == frozen

    fake("resume", "box", check=True)
    assert status(fake, "box") == "running"
    wait_for(lambda: tick.read_text() != frozen, what="ticks after resume")
    fake("kill", "box", "TERM", check=True)
    wait_for(lambda: status(fake, "box") == "stopped", what="stopped")


def test_kill_of_a_paused_container_with_kill_resumes_it_first(fake, make_bundle):
    fake("run", "-d", "--bundle", make_bundle(["sleep", "1000"]), "box", check=True)
    fake("pause", "box", check=True)
    fake("kill", "box", "9", check=True)
    wait_for(lambda: status(fake, "box") == "stopped", what="stopped")


def test_delete_force_of_a_running_container_leaves_nothing(fake, make_bundle, root):
    fake("run", "-d", "--bundle", make_bundle(["sleep", "1000"]), "box", check=True)
    fake("delete", "--force", "box", check=True)
    assert not (root / "box").exists()  # the fixture checks no process or mount is left


def test_a_missing_program_fails_create_before_a_vm_boots(fake, make_bundle, root):
    result = fake("run", "--bundle", make_bundle(["/no/such/program"]), "box")
    assert result.returncode != 0 and "/no/such/program" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (root / "box").exists()


def test_a_storage_mode_with_disks_is_refused_in_one_line(fake, make_bundle, root):
    bundle = make_bundle(["true"], annotations={"io.runv.storage.mode": "overlay"})
    result = fake("run", "--bundle", bundle, "box")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("runv: hypervisor 'fake' cannot attach raw disks") and result.stderr.count("\n") == 1
    assert not (root / "box").exists()


def test_a_vm_whose_agent_is_killed_stops_and_takes_its_processes_along(fake, make_bundle, root):
    """The container's processes outlive a SIGKILLed agent; the fake VM's stop finds
    them by namespace and root, as a VMM's exit takes its guest along."""
    fake("run", "-d", "--bundle", make_bundle(["sleep", "1000"]), "box", check=True)
    fake("exec", "-d", "box", "sleep", "999", check=True)
    record = json.loads((root / "box" / "state.json").read_text())
    vm = FakeVM.from_record(record["vm"])
    assert len(vm.members()) == 3  # the agent, the container process, the exec'd one
    os.kill(vm.pid, signal.SIGKILL)
    wait_for(lambda: status(fake, "box") == "stopped", what="the shim to notice")
    wait_for(lambda: vm.members() == [], what="the orphans to be killed")
    assert json.loads(fake("state", "box", check=True).stdout)["status"] == "stopped"
    vm.stop(force=True)  # converges: nothing left


class TestDeepRoot:
    """A --root deeper than a unix socket path allows (containerd's, Podman's)."""

    @pytest.fixture
    def root(self, tmp_path):
        return tmp_path / ("d" * 120) / "state"

    def test_run(self, fake, make_bundle, root):
        assert len(str(root / "box" / "agent.sock")) > 108
        result = fake("run", "--bundle", make_bundle(["echo", "deep"]), "box")
        assert (result.returncode, result.stdout) == (0, "deep\n"), result.stderr


def test_events_go_on_through_a_pause_and_end_when_the_container_stops(fake, make_bundle, root, tmp_path):
    fake("run", "-d", "--bundle", make_bundle(["sleep", "1000"]), "box", check=True)
    fake("pause", "box", check=True)  # before the stream starts: its first readings fail
    out, err = tmp_path / "events.out", tmp_path / "events.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        events = subprocess.Popen([*fake.argv, "events", "--interval", "100ms", "box"], stdout=stdout, stderr=stderr,
                                  env=fake.env)
    try:
        wait_for(lambda: err.read_text(), what="the paused reading said")
        time.sleep(0.5)  # several intervals while paused: the reason is said once
        fake("resume", "box", check=True)
        wait_for(lambda: out.read_text().count("\n") >= 1, what="stats after resume")
        fake("kill", "box", "KILL", check=True)
        assert events.wait(timeout=10) == 0  # the stream ends with the container, as runc's
    finally:
        events.kill()
    assert err.read_text() == "runv: container box is paused: resume it first\n"
    first = out.read_text().splitlines()[0]
    assert first.startswith('{"type":"stats","id":"box","data":{') and json.loads(first)["data"]["pids"]["current"] >= 1

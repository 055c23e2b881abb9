"""The real CLI and shim against a hostile guest agent (tests/unit/hostile_vmm.py): an agent
that says "ok" to every signal and does nothing, never answers, floods output before and
after its replies, sends malformed, oversized and deeply nested frames, non-object
payloads and bad exit codes. Each case ends with the container stopped or killable
within seconds, the shim's peak RSS under a ceiling, and nothing left after delete
(the ``hostile`` fixture checks: no process, no mount)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from runv.testing import fake_distribution, leftovers_in, with_path
from runv.testing.host import OomWatch

RUNV = str(Path(sys.executable).with_name("runv"))
RSS_CEILING_KIB = 96 * 1024  # the agent streams 400 MiB; the shim may hold one bounded outbox (16 MiB) of it
KILL_WITHIN = 5.0


@pytest.fixture(scope="session")
def hostile_site(tmp_path_factory) -> Path:
    source = (Path(__file__).parent / "hostile_vmm.py").read_text()
    return fake_distribution(tmp_path_factory.mktemp("hostile"), "runv-hostile", {"runv.hypervisors": {"hostile": "hostile_vmm"}},
                             {"hostile_vmm.py": source})


@pytest.fixture
def hostile(tmp_path, root, hostile_site, guest_files, hermetic):
    """``hostile(mode, *args)`` runs ``runv --hypervisor hostile ARGS`` with the agent
    misbehaving as ``mode`` says; afterwards every container is deleted, nothing may be left."""
    kernel, initrd = guest_files
    log = tmp_path / "runv.log"

    def call(mode, *args, timeout=30, **kwargs):
        env = with_path(None, hostile_site)
        env["RUNV_HOSTILE"] = mode
        argv = [RUNV, "--root", str(root), "--log", str(log), "--kernel", str(kernel), "--initrd", str(initrd),
                "--hypervisor", "hostile", *map(str, args)]
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            kwargs.setdefault("stdout", out)
            kwargs.setdefault("stderr", err)
            result = subprocess.run(argv, timeout=timeout, env=env, **kwargs)
            out.seek(0)
            err.seek(0)
            result.stdout, result.stderr = out.read().decode(), err.read().decode()
        return result

    call.log = log
    call.root = root
    yield call
    if root.is_dir():
        for cid in os.listdir(root):
            result = call("obedient", "delete", "--force", cid, timeout=30)
            assert result.returncode == 0, result.stderr
    assert leftovers_in(tmp_path) == []


def record(hostile, cid="box") -> dict:
    return json.loads((hostile.root / cid / "state.json").read_text())


def shim_gone(hostile, cid="box") -> bool:
    rec = record(hostile, cid)
    return rec["status"] == "stopped" and not Path(f"/proc/{rec['shim_pid']}").exists()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def started(hostile, mode, make_bundle, **kwargs):
    bundle = make_bundle(["sleep", "1000"])
    created = hostile(mode, "create", "--bundle", bundle, "box", **kwargs)
    assert created.returncode == 0, created.stderr
    result = hostile(mode, "start", "box")
    assert result.returncode == 0, result.stderr
    return record(hostile)["shim_pid"]


def test_kill_needs_no_consent_from_the_guest(hostile, make_bundle):
    """The agent answers "ok" to every signal and does nothing: KILL still stops it, with 137."""
    started(hostile, "obedient", make_bundle)
    assert hostile("obedient", "kill", "box", "TERM").returncode == 0  # "delivered"; the guest ignores it
    begin = time.monotonic()
    result = hostile("obedient", "kill", "box", "KILL")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: shim_gone(hostile), KILL_WITHIN, "the killed container to stop")
    assert time.monotonic() - begin < KILL_WITHIN
    assert record(hostile)["exit_code"] == 137


def test_kill_all_is_the_hosts_too(hostile, make_bundle):
    started(hostile, "obedient", make_bundle)
    assert hostile("obedient", "kill", "--all", "box", "9").returncode == 0
    wait_for(lambda: shim_gone(hostile), KILL_WITHIN, "the killed container to stop")
    assert record(hostile)["exit_code"] == 137


def test_an_unanswered_signal_is_reported_not_hung_on(hostile, make_bundle):
    started(hostile, "never-answer", make_bundle)
    begin = time.monotonic()
    result = hostile("never-answer", "kill", "box", "TERM")
    assert result.returncode != 0 and "not delivered" in result.stderr, result.stderr
    assert time.monotonic() - begin < 10
    assert len(result.stderr.strip().splitlines()) == 1
    assert hostile("never-answer", "kill", "box", "KILL").returncode == 0
    wait_for(lambda: shim_gone(hostile), KILL_WITHIN, "the killed container to stop")


@pytest.mark.parametrize("mode", ["deep", "non-dict", "list-id", "bad-code", "big-code", "no-proc", "oversized"])
def test_a_malformed_message_stops_the_container_with_a_reason(hostile, make_bundle, mode):
    shim = started(hostile, mode, make_bundle)
    wait_for(lambda: shim_gone(hostile), 10, "the shim to close the channel and stop")
    assert peak_rss_kib_or_zero(shim) < RSS_CEILING_KIB
    assert record(hostile)["exit_code"] == 255
    log = hostile.log.read_text()
    assert "agent channel closed by the host" in log, log
    assert "Traceback" not in log


def peak_rss_kib_or_zero(pid: int) -> int:
    try:
        return peak_rss_kib(pid)
    except OSError:
        return 0


def test_a_flood_before_the_exec_reply_is_bounded(hostile, make_bundle):
    """400 MiB on an exec's stdout before the agent answers the exec: the shim holds a
    bounded part of it, answers, and stays killable."""
    shim = started(hostile, "flood-before", make_bundle)
    env = with_path(None, Path(hostile.root))  # unused path entry; the exec client needs no plugin
    exec_client = subprocess.Popen([RUNV, "--root", str(hostile.root), "exec", "box", "true"], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(6)  # the flood: 400 MiB through the shim's reader
        peak = peak_rss_kib(shim)
        print(f"shim peak RSS {peak} KiB")
        assert peak < RSS_CEILING_KIB, f"shim peak RSS {peak} KiB"
        begin = time.monotonic()
        assert hostile("flood-before", "kill", "box", "KILL").returncode == 0
        wait_for(lambda: shim_gone(hostile), KILL_WITHIN, "the killed container to stop")
        assert time.monotonic() - begin < KILL_WITHIN
    finally:
        exec_client.kill()
        exec_client.wait()


def test_a_flood_to_a_stuck_stdout_neither_grows_the_shim_nor_blocks_control(hostile, make_bundle):
    """The container's stdout is a pipe nobody reads while the agent streams 400 MiB:
    the shim's memory stays bounded, `ps` still answers (with the guest's string escaped)."""
    read_end, write_end = os.pipe()
    try:
        shim = started(hostile, "flood-after", make_bundle, stdout=write_end)
        os.close(write_end)
        write_end = None
        time.sleep(6)
        begin = time.monotonic()
        result = hostile("flood-after", "ps", "box")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - begin < 6
        assert "\x1b" not in result.stdout and "evil\\n\\x1b[31mINFO forged" in result.stdout, result.stdout
        peak = peak_rss_kib(shim)
        print(f"shim peak RSS {peak} KiB")
        assert peak < RSS_CEILING_KIB, f"shim peak RSS {peak} KiB"
        assert hostile("flood-after", "kill", "box", "KILL").returncode == 0
        wait_for(lambda: shim_gone(hostile), KILL_WITHIN + 3, "the killed container to stop")
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


def test_kill_stops_the_vm_even_when_the_shim_cannot_answer(hostile, make_bundle):
    """A frozen shim (here: SIGSTOP) cannot take KILL: `runv kill` stops the VM and the shim itself."""
    import signal

    shim = started(hostile, "obedient", make_bundle)
    vm_pid = record(hostile)["vm"]["pid"]
    os.kill(shim, signal.SIGSTOP)
    begin = time.monotonic()
    result = hostile("obedient", "kill", "box", "KILL")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - begin < 15
    wait_for(lambda: not Path(f"/proc/{shim}").exists() and not Path(f"/proc/{vm_pid}").exists(), 5,
             "the shim and its VM to be gone")


def test_an_agent_of_another_release_is_refused_in_one_line(hostile, make_bundle):
    """A guest image an earlier release built (its agent says no protocol version): create
    fails before anything runs, says what to do, and leaves nothing (the fixture checks)."""
    created = hostile("other-release", "create", "--bundle", make_bundle(["true"]), "box")
    assert created.returncode == 1
    assert created.stderr.startswith("runv: the guest agent in ") and created.stderr.count("\n") == 1
    assert "speaks protocol 0, this runv 1" in created.stderr and "run `runv guest build`" in created.stderr
    assert not (hostile.root / "box").exists()


def test_oom_kills_a_guest_makes_up_are_one_a_second_on_the_host_and_only_its_own(hostile, make_bundle):
    """The agent claims 50 OOM kills in its container at once, and some in a container
    the VM does not hold, with escapes in its id: the host repeats one (a guest can make
    its own container's cgroup see at most one a second), logs the unknown id escaped,
    and the container runs on."""
    bundle = make_bundle(["sleep", "1000"], linux={"cgroupsPath": f"/runv-test-hostile-{os.getpid()}"})
    assert hostile("oom-flood", "create", "--bundle", bundle, "box").returncode == 0
    shim = record(hostile)["shim_pid"]
    watch = OomWatch(shim)
    try:
        assert hostile("oom-flood", "start", "box").returncode == 0
        wait_for(lambda: "is not in the VM" in hostile.log.read_text(), 10, "the unknown container's OOM kill logged")
        assert watch.kills() == 1
    finally:
        watch.close()
    log = hostile.log.read_text()
    assert "\x1b" not in log and "evil\\n\\x1b[31mINFO forged" in log
    assert record(hostile)["status"] == "running" and Path(f"/proc/{shim}").exists()

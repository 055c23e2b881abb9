"""The runc lifecycle with real VMs under QEMU TCG."""

import json
import os
import platform
import signal
import time

import pytest

from runv.testing import vm_processes_in

pytestmark = pytest.mark.usefixtures("guest_image")


def state(runv, cid):
    result = runv("state", cid, check=True)
    return json.loads(result.stdout)


def test_run_prints_guest_kernel_output_and_exit_code(runv, make_bundle):
    bundle = make_bundle(["sh", "-c", "uname -r; echo out; echo err >&2; exit 3"])
    result = runv("run", "--bundle", bundle, "c1")
    assert result.returncode == 3, result.stderr
    release, out = result.stdout.splitlines()
    assert release != platform.release() and release.endswith("amd64")  # the guest's own kernel
    assert out == "out"
    assert result.stderr == "err\n"


def test_create_start_kill_delete(runv, make_bundle, root, tmp_path):
    bundle = make_bundle(["sh", "-c", "trap 'echo got TERM; exit 7' TERM; while true; do sleep 0.1; done"])
    pid_file = tmp_path / "pid"
    out = open(tmp_path / "out", "w")
    assert runv("create", "--bundle", bundle, "--pid-file", pid_file, "c2", stdout=out).returncode == 0
    st = state(runv, "c2")
    assert st["status"] == "created" and st["pid"] == int(pid_file.read_text())
    assert st["bundle"] == str(bundle) and st["id"] == "c2"
    assert runv("start", "c2").returncode == 0
    assert state(runv, "c2")["status"] == "running"
    again = runv("start", "c2")
    assert again.returncode == 1 and "already running" in again.stderr
    listed = json.loads(runv("list", "--format", "json", check=True).stdout)
    assert [c["id"] for c in listed] == ["c2"]
    assert "c2" in runv("list", "-q", check=True).stdout
    refused = runv("delete", "c2")
    assert refused.returncode == 1 and "not stopped: running" in refused.stderr
    time.sleep(1)  # let the shell install its trap
    assert runv("kill", "c2", "TERM").returncode == 0
    wait_for(lambda: state(runv, "c2")["status"] == "stopped")
    assert (tmp_path / "out").read_text() == "got TERM\n"
    gone = runv("kill", "c2", "KILL")
    assert gone.returncode == 1 and "container not running" in gone.stderr
    late = runv("start", "c2")
    assert late.returncode == 1 and "cannot start a container that has stopped" in late.stderr
    assert runv("delete", "c2").returncode == 0
    assert not (root / "c2").exists()
    missing = runv("state", "c2")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_signal_to_shim_pid_reaches_container_and_kill_gives_137(runv, make_bundle, tmp_path):
    # The container's process is PID 1 of its own PID namespace, as under runc: a signal it has
    # no handler for is not delivered to it (SIGKILL from outside always is), so it traps TERM.
    bundle = make_bundle(["sh", "-c", "trap 'exit 143' TERM; touch /ready; sleep 1000 & wait"])
    pid_file = tmp_path / "pid"
    runv("create", "--bundle", bundle, "--pid-file", pid_file, "c3", check=True)
    runv("start", "c3", check=True)
    wait_for(lambda: (bundle / "rootfs" / "ready").exists())  # the trap is set (the rootfs is the bundle's)
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    wait_for(lambda: state(runv, "c3")["status"] == "stopped")
    runv("delete", "c3", check=True)
    runv("run", "-d", "--bundle", bundle, "c4", check=True)
    runv("kill", "c4", "9", check=True)
    wait_for(lambda: state(runv, "c4")["status"] == "stopped")
    runv("delete", "c4", check=True)


def test_foreground_run_reports_signal_exit(runv, make_bundle, root):
    # PID 1 of a PID namespace cannot kill itself (kill -9 $$ is ignored, under runc too): the
    # signal comes from outside, as `runv kill` sends it.
    import subprocess

    from runv.testing.host import RUNV

    run = subprocess.Popen([RUNV, "--root", str(root), "run", "--bundle", str(make_bundle(["sleep", "1000"])), "c5"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: runv("state", "c5").returncode == 0 and state(runv, "c5")["status"] == "running", timeout=120)
        runv("kill", "c5", "KILL", check=True)
        assert run.wait(timeout=60) == 137
    finally:
        run.kill()


def test_writes_land_in_the_bundle_rootfs(runv, make_bundle):
    bundle = make_bundle(["sh", "-c", "echo hello > /tmp/written; hostname"])
    result = runv("run", "--bundle", bundle, "c6")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "runv-test\n"
    assert (bundle / "rootfs/tmp/written").read_text() == "hello\n"


def test_readonly_rootfs_refuses_writes(runv, make_bundle):
    bundle = make_bundle(["sh", "-c", "echo x > /tmp/nope"], readonly=True)
    result = runv("run", "--bundle", bundle, "c7")
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    assert not (bundle / "rootfs/tmp/nope").exists()


def test_delete_force_converges_after_sigkill_of_shim_and_vm(runv, make_bundle, root, tmp_path):
    pid_file = tmp_path / "pid"
    runv("run", "-d", "--pid-file", pid_file, "--bundle", make_bundle(["sleep", "1000"]), "c8", check=True)
    vms = vm_processes_in(root)
    assert len(vms) == 1
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    # the shim is the init of its PID namespace: it is gone once the kernel has killed QEMU and the rest there
    wait_for(lambda: state(runv, "c8")["status"] == "stopped", 2.0)
    assert vm_processes_in(root) == []
    assert runv("delete", "--force", "c8").returncode == 0
    assert not vm_processes_in(root) and not (root / "c8").exists()
    runv("run", "-d", "--bundle", make_bundle(["sleep", "1000"], name="b2"), "c9", check=True)
    for pid in vm_processes_in(root):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: state(runv, "c9")["status"] == "stopped")
    assert runv("delete", "--force", "c9").returncode == 0
    assert not (root / "c9").exists()


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_container_dev_holds_only_the_standard_nodes(runv, make_bundle):
    script = "ls /dev; echo x > /dev/null && head -c 4 /dev/zero | wc -c; ls /dev/pts"
    result = runv("run", "--bundle", make_bundle(["sh", "-c", script]), "dev")
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert {"null", "zero", "urandom", "tty", "ptmx", "pts", "shm"} <= set(names)
    assert not [n for n in names if n.startswith(("vport", "vd", "hvc", "ttyS"))]  # no guest devices
    assert "4" in names

"""runc behaviours that Podman (conmon) and containerd (go-runc) rely on, found by running
them against runv (tests/vm/test_podman.py, tests/vm/test_containerd.py), pinned here at runv's
own command line with VMs (those answered before any VM: tests/unit/test_runc_compat_cli.py)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from test_exec_tty import ConsoleReceiver as Receiver
from test_exec_tty import read_until

from runv.testing import vm_processes_in
from runv.testing.host import RUNV


@pytest.mark.usefixtures("guest_image")  # the initrd it boots with the broken kernel
def test_vm_that_exits_during_boot_says_why(runv, make_bundle, root, tmp_path):
    broken = tmp_path / "kernel"
    broken.write_bytes(os.urandom(4096))
    result = runv("--kernel", broken, "create", "--bundle", make_bundle(["true"]), "c1")
    assert result.returncode == 1
    # QEMU's own words, not "the VM closed the agent channel"
    assert "exited during boot: qemu" in result.stderr, result.stderr
    assert not (root / "c1").exists()


DEVPTS = {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}


@pytest.fixture
def with_devpts(runv, make_bundle):
    """A running container whose spec mounts its own /dev/pts, as Podman's and containerd's do."""
    runv("run", "-d", "--bundle", make_bundle(["sleep", "1000"], mounts=[DEVPTS]), "pts", check=True)
    return "pts"


@pytest.mark.usefixtures("guest_image")
def test_exec_tty_is_on_the_containers_devpts_and_sized_early(runv, with_devpts, tmp_path):
    receiver = Receiver(tmp_path / "console.sock", size=(41, 121))  # sized the moment it arrives
    pid_file = tmp_path / "pid"
    result = runv("exec", "-t", "-d", "--console-socket", receiver.path, "--pid-file", pid_file, with_devpts, "sh")
    assert result.returncode == 0, result.stderr
    master = receiver.wait()
    try:
        os.write(master, b"tty; stty size\n")
        output = read_until(master, b"41 121")  # the early size reached the guest
        assert b"/dev/pts/0" in output and b"not a tty" not in output  # ttyname() works in the container
        os.write(master, b"exit\n")
    finally:
        os.close(master)


@pytest.mark.usefixtures("guest_image")
def test_terminal_create_and_exec_let_go_of_the_callers_stdio(root, make_bundle, tmp_path):
    """go-runc (containerd) reads create's and exec's output until end-of-file when there
    is a terminal: runv's shim and exec relay must not hold the caller's pipe."""
    bundle = make_bundle(["sh"], terminal=True, mounts=[DEVPTS])
    receiver = Receiver(tmp_path / "create.sock")
    base = [RUNV, "--root", str(root)]
    try:
        create = subprocess.run(
            [*base, "create", "--bundle", str(bundle), "--console-socket", str(receiver.path), "t1"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=120,  # reads to EOF: hangs if held
        )
        assert create.returncode == 0, create.stderr
        master = receiver.wait()
        subprocess.run([*base, "start", "t1"], check=True, capture_output=True, timeout=60)
        exec_receiver = Receiver(tmp_path / "exec.sock")
        started = time.monotonic()
        exec_ = subprocess.run(
            [*base, "exec", "-t", "-d", "--console-socket", str(exec_receiver.path), "t1", "sleep", "1000"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
        assert exec_.returncode == 0 and time.monotonic() - started < 30, exec_.stderr
        os.close(exec_receiver.wait())
        os.write(master, b"echo alive\n")
        read_until(master, b"alive")
        os.close(master)
    finally:
        subprocess.run([*base, "delete", "--force", "t1"], capture_output=True, timeout=60)
    assert not vm_processes_in(root)



@pytest.mark.usefixtures("guest_image")
def test_deep_root_and_long_id(make_bundle, tmp_path):
    """Podman's and containerd's roots plus 64-character ids make socket paths longer
    than a unix socket address holds (108 bytes)."""
    root = tmp_path / ("deep-" * 8) / "runv"
    cid = "c" * 64
    assert len(str(root / cid / "agent.sock")) > 108
    log = tmp_path / "log"
    base = [RUNV, "--root", str(root), "--log", str(log)]
    try:
        result = subprocess.run([*base, "run", "--bundle", str(make_bundle(["echo", "deep"])), cid], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0 and result.stdout == "deep\n", result.stderr
        if os.environ.get("RUNV_TEMPLATE_DIR"):  # the session template: a restore connects by the long path too
            assert "restored from template" in log.read_text()
    finally:
        subprocess.run([*base, "delete", "--force", cid], capture_output=True, timeout=60)
    assert not vm_processes_in(root)

"""exec, terminals, signals, pause/resume, ps, events, features and OCI hooks, with real VMs."""

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest
from test_confinement import bundle_of, default_config

from runv.testing.host import RUNV, OomWatch

pytestmark = pytest.mark.usefixtures("guest_image")


@pytest.fixture
def running(runv, make_bundle):
    """A running container (a sleeping busybox) named ``box``."""
    runv("run", "-d", "--bundle", make_bundle(["sleep", "1000"]), "box", check=True)
    return "box"


def status(runv, cid):
    return json.loads(runv("state", cid, check=True).stdout)["status"]


def host_children_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class ConsoleReceiver:
    """A console socket written the way conmon and containerd use theirs: it takes the pty
    master and (optionally) sizes it at once, as conmon does right after the runtime
    returns, racing the runtime's own set-up."""

    def __init__(self, path, size=None):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.size = size
        self.master = None
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self):
        conn, _ = self.sock.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        if self.size:
            set_size(fds[0], *self.size)
        self.master = fds[0]

    def wait(self):
        self.thread.join(60)
        assert self.master is not None, "no pty master arrived"
        return self.master


def read_until(fd, needle, timeout=30):
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} not seen in {data!r}"
        if select.select([fd], [], [], remaining)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    assert needle in data, data
    return data


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_exec_output_exit_code_env_and_cwd(runv, running):
    result = runv("exec", "-e", "X=1", "--cwd", "/tmp", running, "sh", "-c", "echo $X $PATH; pwd; echo e >&2; exit 4")
    assert result.returncode == 4
    assert result.stdout == "1 /bin\n/tmp\n" and result.stderr == "e\n"


def test_exec_stdin_one_mebibyte_round_trip(runv, running, root, tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "in").write_bytes(data)
    with open(tmp_path / "in", "rb") as stdin, open(tmp_path / "out", "wb") as stdout:
        code = subprocess.run([RUNV, "--root", str(root), "exec", running, "cat"], stdin=stdin, stdout=stdout, timeout=120).returncode
    assert code == 0
    assert (tmp_path / "out").read_bytes() == data


def test_concurrent_execs_have_their_own_streams(runv, running):
    results = {}

    def one(n):
        results[n] = runv("exec", running, "sh", "-c", f"for i in 1 2 3; do echo {n}-$i; done; exit {n}")

    threads = [threading.Thread(target=one, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(5):
        assert results[n].returncode == n
        assert results[n].stdout == "".join(f"{n}-{i}\n" for i in (1, 2, 3))


def test_twenty_execs_leave_no_host_processes(runv, running, root):
    shim = json.loads(runv("state", running, check=True).stdout)["pid"]
    before = set(host_children_of(shim))
    for _ in range(20):
        assert runv("exec", running, "true").returncode == 0
    assert set(host_children_of(shim)) == before
    leftovers = subprocess.run(["pgrep", "-f", f"exec {running}"], capture_output=True, text=True).stdout
    assert not leftovers


def test_detached_exec_pid_file_and_signals(runv, running, tmp_path):
    pid_file = tmp_path / "exec.pid"
    out = open(tmp_path / "out", "w")
    script = "trap 'echo trapped; exit 9' TERM; echo ready; while true; do sleep 0.1; done"
    assert runv("exec", "-d", "--pid-file", pid_file, running, "sh", "-c", script, stdout=out).returncode == 0
    relay = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while "ready" not in (tmp_path / "out").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(relay, signal.SIGTERM)  # a signal to the relay reaches the exec'd process
    while "trapped" not in (tmp_path / "out").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_kill_reaches_init_and_kill_all_every_process(runv, running):
    runv("exec", "-d", running, "sleep", "500", check=True)
    shim, vmm = json.loads(runv("ps", "--format", "json", running, check=True).stdout)  # host PIDs, for docker top
    assert shim == json.loads(runv("state", running, check=True).stdout)["pid"]
    assert Path(f"/proc/{vmm}/exe").resolve().name.startswith("qemu-system")
    assert "sleep 500" in runv("ps", running, check=True).stdout  # the table: the guest's processes
    runv("kill", "--all", running, "KILL", check=True)
    deadline = time.monotonic() + 30
    while status(runv, running) != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_pause_resume(runv, running):
    runv("pause", running, check=True)
    assert status(runv, running) == "paused"
    refused = runv("exec", running, "true")
    assert refused.returncode == 1 and "paused" in refused.stderr
    assert "paused" in runv("kill", running, "TERM").stderr
    assert runv("pause", running).stderr.strip() == "runv: container not running"
    runv("resume", running, check=True)
    assert status(runv, running) == "running"
    assert runv("resume", running).stderr.strip() == "runv: container not paused"
    assert runv("exec", running, "true").returncode == 0


def test_events_stats(runv, running):
    event = json.loads(runv("events", "--stats", running, check=True).stdout)
    assert event["type"] == "stats" and event["id"] == running
    data = event["data"]
    assert data["cpu"]["usage"]["total"] > 0
    assert 0 < data["memory"]["usage"]["usage"] < data["memory"]["usage"]["limit"]
    assert data["pids"]["current"] >= 1


def test_features_say_what_is_not_supported(runv):
    features = json.loads(runv("features", check=True).stdout)
    # the guest applies namespaces, user namespaces included, and seccomp (docs/confinement.md); no LSM
    assert {"user", "pid", "mount", "cgroup"} <= set(features["linux"]["namespaces"])
    assert features["linux"]["seccomp"]["enabled"] is True and features["linux"]["apparmor"]["enabled"] is False
    assert "prestart" in features["hooks"] and "startContainer" in features["hooks"]


def test_exec_tty_with_console_socket_and_resize(runv, running, tmp_path):
    receiver = ConsoleReceiver(tmp_path / "console.sock")
    pid_file = tmp_path / "pid"
    result = runv("exec", "-t", "-d", "--console-socket", receiver.path, "--pid-file", pid_file, running, "sh")
    assert result.returncode == 0, result.stderr
    master = receiver.wait()
    set_size(master, 40, 120)
    time.sleep(0.5)
    os.write(master, b"stty size\n")
    read_until(master, b"40 120")
    set_size(master, 20, 70)  # a later resize reaches the guest (SIGWINCH there)
    time.sleep(0.5)
    os.write(master, b"stty size\n")
    read_until(master, b"20 70")
    os.write(master, b"exit 3\n")
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid_file.read_text()}"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.close(master)


def test_run_tty_through_a_pty(root, make_bundle):
    bundle = make_bundle(["sh"], terminal=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["consoleSize"] = {"height": 30, "width": 100}
    (bundle / "config.json").write_text(json.dumps(config))
    pid, master = pty.fork()
    if pid == 0:
        os.execv(RUNV, [RUNV, "--root", str(root), "run", "--bundle", str(bundle), "tty1"])
    try:
        set_size(master, 30, 100)
        read_until(master, b"# ", timeout=60)
        os.write(master, b"stty size\r")
        read_until(master, b"30 100")
        os.write(master, b"sleep 100\r")
        time.sleep(1)
        os.write(master, b"\x03")  # Ctrl-C: SIGINT to the guest's foreground process
        os.write(master, b"echo after $?\r")
        read_until(master, b"after 130")
        os.write(master, b"exit 3\r")
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 3
    finally:
        os.close(master)


def test_tty_without_terminal_or_socket_is_refused(runv, running, root, make_bundle, tmp_path):
    result = runv("exec", "-t", running, "sh")
    assert result.returncode == 1 and "stdin is not a terminal" in result.stderr
    result = runv("exec", "-t", "--console-socket", tmp_path / "none.sock", running, "sh")
    assert result.returncode == 1 and "none.sock does not exist" in result.stderr
    result = runv("create", "--bundle", make_bundle(["sh"], terminal=True, name="t"), "t")
    assert result.returncode == 1 and "--console-socket" in result.stderr
    assert not (root / "t").exists()


def test_exec_bad_input(runv, running, tmp_path):
    (tmp_path / "p.json").write_text("{")
    assert "is not valid JSON" in runv("exec", "--process", tmp_path / "p.json", running).stderr
    (tmp_path / "p.json").write_text(json.dumps({"args": []}))
    assert "process.args" in runv("exec", "--process", tmp_path / "p.json", running).stderr
    assert "does not exist" in runv("exec", "ghost", "true").stderr
    missing = runv("exec", running, "/no/such")
    assert missing.returncode != 0 and "/no/such" in missing.stderr


def test_caller_disappearing_does_not_hang_the_shim(runv, running, root):
    proc = subprocess.Popen([RUNV, "--root", str(root), "exec", running, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    time.sleep(2)
    proc.kill()  # the relay dies; its stdin closes; cat in the guest gets EOF
    proc.wait()
    deadline = time.monotonic() + 30
    while "cat" in runv("ps", running, check=True).stdout:
        assert time.monotonic() < deadline, "cat never got EOF"
        time.sleep(0.2)
    assert runv("exec", running, "echo", "alive").stdout == "alive\n"


def test_hooks_receive_state_on_stdin(runv, make_bundle, tmp_path):
    log = tmp_path / "hooks.log"
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat >> {log}; echo >> {log}"]}
    hooks = {kind: [hook] for kind in ("createRuntime", "createContainer", "prestart", "poststart", "poststop")}
    bundle = make_bundle(["true"], hooks=hooks)
    assert runv("run", "--bundle", bundle, "hooked").returncode == 0
    states = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert [s["status"] for s in states] == ["creating", "created", "created", "running", "stopped"]
    assert all(s["id"] == "hooked" and s["bundle"] == str(bundle) for s in states)


def test_failing_prestart_fails_create_and_cleans_up(runv, make_bundle, root):
    hooks = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no way >&2; exit 2"]}]}
    result = runv("create", "--bundle", make_bundle(["true"], hooks=hooks), "nohook")
    assert result.returncode == 1
    assert "prestart hook #0 (/bin/sh) failed with exit status 2: no way" in result.stderr
    assert not (root / "nohook").exists()


def oom_events(runtime, cid, tmp_path):
    """What ``runtime events`` prints while a process of container ``cid`` allocates 100 MiB
    past its 32 MiB limit, up to the first ``oom`` event (at most 30 s of events), and the
    allocating process's exit status."""
    events = subprocess.Popen([*runtime, "events", "--interval", "500ms", cid], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the first stats event sets the baseline
        with open(tmp_path / f"{cid}.hog", "w") as out:
            hog = subprocess.run([*runtime, "exec", cid, "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
                                 stdout=out, stderr=out, timeout=120)
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline and (line := events.stdout.readline()):
            seen.append(json.loads(line))
            if seen[-1]["type"] == "oom":
                break
        return hog.returncode, seen
    finally:
        events.kill()
        events.wait()


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_an_oom_kill_reaches_events_and_the_host_cgroup_of_the_containers_pid_as_under_runc(runv, make_bundle, root,
                                                                                            tmp_path):
    """``events`` prints an ``oom`` event, and the memory cgroup of the PID ``state`` names
    is notified of an OOM kill, as containerd's shim watches it (Docker's ``OOMKilled``):
    runc's kernel kills there; runv repeats the guest's kill there (runv.vm.oommirror) and
    its VM lives on."""
    def spec_for(runtime):
        spec = default_config("sleep 1000")
        spec["linux"]["resources"] = {"memory": {"limit": 32 << 20}}
        spec["linux"]["cgroupsPath"] = f"/runv-test-oom-{runtime}-{os.getpid()}"
        return bundle_of(make_bundle, spec, runtime)

    runc = ["runc", "--root", str(tmp_path / "runc")]
    with open(tmp_path / "runc.out", "w") as out:  # the container keeps runc's stdio: files, not pipes
        assert subprocess.run([*runc, "run", "-d", "--bundle", spec_for("runc"), "r1"],
                              stdout=out, stderr=out).returncode == 0, (tmp_path / "runc.out").read_text()
    try:
        theirs = watched_oom(runc, "r1", tmp_path)
    finally:
        subprocess.run([*runc, "delete", "--force", "r1"], capture_output=True)
    runv("run", "-d", "--bundle", spec_for("runv"), "v1", check=True)
    ours = watched_oom([RUNV, "--root", str(root)], "v1", tmp_path)
    for (status, seen, notified), cid in ((theirs, "r1"), (ours, "v1")):
        assert status == 137, cid  # the kernel's OOM killer (the guest's under runv) sent SIGKILL
        assert seen[0]["type"] == "stats" and seen[-1] == {"type": "oom", "id": cid}, seen
        assert notified, cid
    assert runv("exec", "v1", "true").returncode == 0  # the host killed a child of the shim's, not the VM


def watched_oom(runtime, cid, tmp_path):
    """:func:`oom_events`, and whether the memory cgroup of the container's PID was
    notified of an OOM meanwhile (:class:`OomWatch`)."""
    watch = OomWatch(json.loads(subprocess.run([*runtime, "state", cid], capture_output=True, check=True).stdout)["pid"])
    try:
        status, seen = oom_events(runtime, cid, tmp_path)
        return status, seen, watch.fired(timeout=10)
    finally:
        watch.close()

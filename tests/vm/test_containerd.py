"""containerd (Debian's 1.6) runs containers with runv through its runc shim
(io.containerd.runc.v2 with ``--runc-binary``): the test starts its own containerd, with
config, root, state and socket under a temporary directory and the CRI plugin disabled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from realclients import PtySession, containerd_config, mounts_under, oci_archive, run, runv_ids, stop_daemon, wait_for_daemon

from runv.testing import vm_processes_in
from runv.testing.host import RUNV

CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
IMAGE = "localhost/runv-busybox:latest"
NAMESPACE = "runv-test"

pytestmark = [
    pytest.mark.usefixtures("guest_image"),
    pytest.mark.skipif(
        CONTAINERD is None or CTR is None or os.geteuid() != 0, reason="needs root and containerd (scripts/install installs Debian's containerd)"
    ),
]

class Containerd:
    """``ctr`` against the test's own containerd; tasks run with runv, its --root under
    the temporary directory (``--runc-root``)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runv_root = base / "runv"  # the shim passes --root <runc-root>/<namespace>
        self.ns_root = self.runv_root / NAMESPACE

    def argv(self, *args) -> list[str]:
        return [CTR, "--address", str(self.base / "containerd.sock"), "--namespace", NAMESPACE, *map(str, args)]

    def __call__(self, *args, check=False, timeout=180) -> subprocess.CompletedProcess:
        result = run(self.argv(*args), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr}")
        return result

    def run_args(self, *args) -> list[str]:
        return ["run", "--runc-binary", RUNV, "--runc-root", self.runv_root, *args]

    def task_status(self, name: str) -> str | None:
        for line in self("task", "ls", check=True).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return fields[-1]
        return None


@pytest.fixture(scope="module")
def ctr(base_rootfs):
    base = Path(tempfile.mkdtemp(prefix="runv-ctrd-"))  # short: unix socket paths live under it
    (base / "config.toml").write_text(containerd_config(base, top='disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'))
    log = open(base / "containerd.log", "wb")
    proc = subprocess.Popen([CONTAINERD, "--config", str(base / "config.toml")], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    client = Containerd(base)
    def cleanup() -> None:
        stop_daemon(proc, base / "containerd.sock")
        shutil.rmtree(base, ignore_errors=True)

    wait_for_daemon("containerd", proc, lambda: client("version").returncode == 0, base / "containerd.log", cleanup, 30)
    client("images", "import", oci_archive(base_rootfs, base / "image.tar", IMAGE), check=True)
    try:
        yield client
    finally:
        for line in client("task", "ls").stdout.splitlines()[1:]:
            name = line.split()[0]
            client("task", "kill", "--signal", "KILL", name)
            client("task", "delete", "--force", name)
        for name in client("containers", "ls", "--quiet").stdout.split():
            client("containers", "delete", name)
        left = runv_ids(client.ns_root)
        vms = vm_processes_in(client.runv_root)
        stop_daemon(proc, base / "containerd.sock")
        log.close()
        for point in mounts_under(base):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"containerd left runv containers behind: {left}"
        assert not vms, "VM processes left behind"


def test_run_output_and_exit_code(ctr):
    result = ctr(*ctr.run_args("--rm", IMAGE, "once", "sh", "-c", "echo hi; echo err >&2; exit 3"))
    assert result.returncode == 3, result.stderr
    assert result.stdout == "hi\n" and "err\n" in result.stderr
    assert runv_ids(ctr.ns_root) == []  # deleted through runv, under containerd's --root


def test_run_tty(ctr):
    session = PtySession(ctr.argv(*ctr.run_args("--rm", "-t", IMAGE, "tty1", "sh")), rows=24, cols=90)
    session.check_shell(b"/dev/pts/0", 6, prompt_timeout=120)


def test_detached_task_exec_pause_ps_kill_delete(ctr):
    # the task is PID 1 of its PID namespace (as under runc): it gets only the signals it
    # handles, so it handles TERM as TERM's default would (143)
    ctr(*ctr.run_args("-d", IMAGE, "box", "sh", "-c", "trap 'exit 143' TERM; sleep 100000 & wait"), check=True)
    assert ctr.task_status("box") == "RUNNING"
    assert (ctr.ns_root / "box").is_dir()  # runv honours the shim's --root

    result = ctr("task", "exec", "--exec-id", "e1", "box", "sh", "-c", "echo in-exec; exit 5")
    assert result.returncode == 5 and result.stdout == "in-exec\n", result.stderr

    session = PtySession(ctr.argv("task", "exec", "-t", "--exec-id", "e2", "box", "sh"), rows=20, cols=70)
    session.check_shell(b"/dev/pts/", 4)

    listing = ctr("task", "ps", "box", check=True).stdout.splitlines()  # runv ps --format json
    assert listing[0].split()[0] == "PID" and len(listing) >= 2 and listing[1].split()[0].isdigit(), listing

    refused = ctr("task", "exec", "--exec-id", "e3", "box", "/no/such/program")
    # containerd read runv's --log (--log-format json) to say why
    assert refused.returncode != 0 and 'exec: "/no/such/program"' in refused.stderr, refused.stderr
    log = ctr.base / "state/io.containerd.runtime.v2.task" / NAMESPACE / "box/log.json"
    assert any(json.loads(line)["level"] == "error" for line in log.read_text().splitlines())

    ctr("task", "pause", "box", check=True)
    assert ctr.task_status("box") == "PAUSED"
    ctr("task", "resume", "box", check=True)
    assert ctr.task_status("box") == "RUNNING"

    ctr("task", "kill", "box", check=True)  # TERM
    deadline = time.monotonic() + 60
    while ctr.task_status("box") != "STOPPED":
        assert time.monotonic() < deadline, "the task did not stop"
        time.sleep(0.2)
    deleted = ctr("task", "delete", "box", check=True)
    assert "143" in deleted.stderr  # ctr: exit with non-zero exit code 143 (TERM)
    ctr("containers", "delete", "box", check=True)
    assert runv_ids(ctr.ns_root) == [] and not vm_processes_in(ctr.runv_root)

"""Podman (Debian's 4.3, through conmon) runs containers with runv: a private configuration
(containers.conf naming runv, storage and runtime state under a temporary directory, so
the host's podman is untouched) and an image imported from a busybox rootfs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from realclients import PtySession, mounts_under, qemu_of, remove_cgroups, rootfs_tar, run, runv_ids

from runv.testing import vm_processes_in
from runv.testing.host import RUNV

PODMAN = shutil.which("podman")
IMAGE = "localhost/runv-busybox:latest"
BRIDGE = "cni-podman0"  # podman 4.3's default CNI network on Debian 12
IPAM_DIR = Path("/var/lib/cni/networks/podman")  # host-local IPAM state of that network

pytestmark = [
    pytest.mark.usefixtures("guest_image"),
    pytest.mark.skipif(PODMAN is None or os.geteuid() != 0, reason="needs root and podman (scripts/install installs Debian's podman)"),
]

CONTAINERS_CONF = """\
[containers]
# this host's default limits are above what podman may set for any runtime
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
runtime = "runv"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{base}/tmp"
# podman passes --log-format=json --log FILE only to the runtimes named here
runtime_supports_json = ["runv", "crun", "runc"]

[engine.runtimes]
runv = ["{runv}"]

[network]
network_backend = "cni"
network_config_dir = "{base}/cni"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "{base}/runroot"
graphroot = "{base}/graph"
"""


class Podman:
    """``podman`` with the private configuration. Its runtime ``runv`` is a two-line
    wrapper that adds ``--root`` (runv's state under the temporary directory): podman does
    not pass ``--runtime-flag`` to the cleanup process conmon starts (``podman container
    cleanup`` deletes with the bare runtime command), so that flag cannot move runv's root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runv_root = base / "runv"
        self.env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(base / "storage.conf")}

    @classmethod
    def configure(cls, base: Path, runv_env: str = "") -> Podman:
        """Writes the private configuration under ``base``: the runv wrapper (``runv_env``:
        variable assignments to put before it), containers.conf and storage.conf."""
        wrapper = base / "bin" / "runv"  # named runv: runtime_supports_json goes by the file name
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\n{runv_env}exec {RUNV} --root {base}/runv "$@"\n')
        wrapper.chmod(0o755)
        (base / "containers.conf").write_text(CONTAINERS_CONF.format(base=base, runv=wrapper))
        (base / "storage.conf").write_text(STORAGE_CONF.format(base=base))
        return cls(base)

    def argv(self, *args) -> list[str]:
        return [PODMAN, *map(str, args)]

    def __call__(self, *args, check=False, timeout=180) -> subprocess.CompletedProcess:
        # conmon writes an `oom` file where podman started it: the temporary directory, not the tests'
        result = run(self.argv(*args), env=self.env, timeout=timeout, cwd=self.base)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr}")
        return result

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name, check=True).stdout.strip()

    def pty(self, *args, rows=30, cols=100) -> PtySession:
        return PtySession(self.argv(*args), env=self.env, rows=rows, cols=cols)


@contextmanager
def host_network_kept():
    """Undoes, on the way out, what podman's default CNI network made on the host that was
    not there before: its bridge, its IPAM state, its iptables chains."""
    bridge_existed = os.path.exists(f"/sys/class/net/{BRIDGE}")
    ipam_existed = IPAM_DIR.exists()
    chains_existed = subprocess.run(["iptables", "-S", "CNI-FORWARD"], capture_output=True).returncode == 0
    try:
        yield
    finally:
        if not bridge_existed:
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        if not ipam_existed:
            shutil.rmtree(IPAM_DIR, ignore_errors=True)
        if not chains_existed:
            rule = ["FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules", "-j", "CNI-FORWARD"]
            for argv in (["-D", *rule], ["-F", "CNI-FORWARD"], ["-X", "CNI-FORWARD"], ["-F", "CNI-ADMIN"], ["-X", "CNI-ADMIN"]):
                subprocess.run(["iptables", *argv], capture_output=True)


@contextmanager
def conmon_cgroups_kept():
    """Removes, on the way out, the cgroups podman's cgroupfs manager makes for conmon
    (``libpod_parent/conmon`` in every hierarchy) where there were none before."""
    cgroups = Path("/sys/fs/cgroup")
    existed = any((cgroups / h / "libpod_parent").exists() for h in ("", *os.listdir(cgroups)))
    try:
        yield
    finally:
        if not existed:
            remove_cgroups("libpod_parent/conmon", "libpod_parent")


@pytest.fixture(scope="module")
def podman(base_rootfs):
    with host_network_kept(), conmon_cgroups_kept():
        base = Path(tempfile.mkdtemp(prefix="runv-podman-"))  # short: conmon's sockets live under it
        pm = Podman.configure(base)
        pm("import", rootfs_tar(base_rootfs, base / "rootfs.tar"), IMAGE, check=True)
        yield pm
        pm("rm", "--all", "--force", "--time", "0", timeout=120)
        left = runv_ids(pm.runv_root)
        pm("system", "reset", "--force", timeout=120)
        for point in mounts_under(base):
            subprocess.run(["umount", "-l", point], capture_output=True)
    vms = vm_processes_in(pm.runv_root)
    shutil.rmtree(base, ignore_errors=True)
    assert not left, f"podman left runv containers behind: {left}"
    assert not vms, "VM processes left behind"


@pytest.fixture(scope="module")
def box(podman):
    """A running container (``podman run -d``) shared by the exec, pause and network tests."""
    result = podman("run", "-d", "--name", "box", IMAGE, "sleep", "100000", check=True)
    cid = result.stdout.strip()
    assert podman.inspect("box", "{{.State.Status}}") == "running"
    assert (podman.runv_root / cid).is_dir()  # runv's --root is the one podman passed
    yield "box"
    podman("rm", "--force", "--time", "0", "box")


def gone(podman: Podman, name: str) -> bool:
    return podman("container", "exists", name).returncode == 1


def test_info_reads_runvs_version_without_errors(podman):
    result = podman("info", "--format", "{{.Host.OCIRuntime.Version}}", check=True)
    assert result.stdout.startswith("runv version ") and result.stderr == ""


def test_run_rm_echo(podman):
    before = runv_ids(podman.runv_root)
    result = podman("run", "--rm", IMAGE, "echo", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"
    assert runv_ids(podman.runv_root) == before  # podman deleted it from runv too


def test_run_nonzero_exit_and_stderr(podman):
    result = podman("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7, result.stderr
    assert result.stdout == "out\n" and "err\n" in result.stderr


def test_run_tty_through_a_pty(podman):
    session = podman.pty("run", "--rm", "-it", IMAGE, "sh", rows=33, cols=101)
    session.check_shell(b"/dev/pts/0", 3, prompt_timeout=120)


def test_exec_output_exit_code_and_stdin(podman, box):
    result = podman("exec", box, "sh", "-c", "echo in-exec; echo to-err >&2; exit 5")
    assert result.returncode == 5 and result.stdout == "in-exec\n" and "to-err" in result.stderr
    with tempfile.TemporaryFile() as stdin:
        stdin.write(b"through stdin\n")
        stdin.seek(0)
        result = run(podman.argv("exec", "-i", box, "cat"), env=podman.env, stdin=stdin)
    assert result.returncode == 0 and result.stdout == "through stdin\n", result.stderr


def test_exec_tty(podman, box):
    session = podman.pty("exec", "-it", box, "sh", rows=22, cols=77)
    session.check_shell(b"/dev/pts/", 4)  # the container's own devpts names its terminal


def test_pause_unpause(podman, box):
    podman("pause", box, check=True)
    assert podman.inspect(box, "{{.State.Status}}") == "paused"
    podman("unpause", box, check=True)
    assert podman.inspect(box, "{{.State.Status}}") == "running"
    assert podman("exec", box, "true").returncode == 0


def test_top_lists_the_containers_own_processes_never_the_hosts(podman, box):
    """``podman top`` reads /proc in the mount namespace of the container's PID (runv's shim):
    the shim's own PID namespace, with the shim, its VMM and the VMM's file server, and
    none of the host's processes (before it, every process of the host, its PID 1 included)."""
    top = podman("top", box, "pid", "comm", check=True).stdout.split("\n")[1:]
    rows = [line.split(None, 1) for line in top if line.strip()]
    assert rows[0] == ["1", "runv"], top  # the shim, the init of its PID namespace
    names = {name.strip() for _, name in rows[1:]}
    assert any(name.startswith("qemu-system") for name in names) and names <= {
        "qemu-system-x86", "qemu-system-x86_64", "virtiofsd"}, top
    with open("/proc/1/comm") as f:
        assert f.read().strip() not in names  # the host's init is not there


def test_default_network_gives_the_container_its_ip(podman, box):
    address = podman.inspect(box, "{{.NetworkSettings.IPAddress}}")
    gateway = podman.inspect(box, "{{.NetworkSettings.Gateway}}")
    assert address and gateway, "podman gave the container no address on its default network"
    shown = podman("exec", box, "ip", "-4", "addr", "show", "eth0")
    assert f"inet {address}/" in shown.stdout, shown.stdout + shown.stderr
    ping = podman("exec", box, "ping", "-c", "1", "-W", "10", gateway)
    assert ping.returncode == 0, ping.stdout + ping.stderr  # the guest reaches the host bridge


def test_kill_delivers_the_signal(podman):
    # The container's process is PID 1 of its PID namespace (as under runc): it gets only the
    # signals it handles, so it handles TERM; it exits as TERM's default would have it (143).
    script = "trap 'exit 143' TERM; echo ready; sleep 1000 & wait"
    cid = podman("run", "-d", "--name", "killed", IMAGE, "sh", "-c", script, check=True).stdout.strip()
    deadline = time.monotonic() + 60
    while "ready" not in podman("logs", "killed").stdout:
        assert time.monotonic() < deadline, "the container never said ready"
        time.sleep(0.2)
    podman("kill", "--signal", "TERM", "killed", check=True)
    podman("wait", "killed", check=True, timeout=60)
    assert podman.inspect("killed", "{{.State.ExitCode}}") == "143"  # sleep died of TERM
    podman("rm", "killed", check=True)
    assert cid not in runv_ids(podman.runv_root)


def test_stop_kills_a_container_that_ignores_term(podman):
    script = 'trap "" TERM; echo ready; while true; do sleep 1; done'
    cid = podman("run", "-d", "--name", "stubborn", IMAGE, "sh", "-c", script, check=True).stdout.strip()
    deadline = time.monotonic() + 60
    while "ready" not in podman("logs", "stubborn").stdout:
        assert time.monotonic() < deadline, "the container never said ready"
        time.sleep(0.2)
    started = time.monotonic()
    result = podman("stop", "--time", "2", "stubborn")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert 2 <= took < 60
    assert podman.inspect("stubborn", "{{.State.ExitCode}}") == "137"  # KILLed after TERM did nothing
    podman("rm", "stubborn", check=True)
    assert cid not in runv_ids(podman.runv_root) and qemu_of(podman.runv_root, cid) is None


def test_rm_force_of_a_running_container(podman):
    cid = podman("run", "-d", "--name", "doomed", IMAGE, "sleep", "1000", check=True).stdout.strip()
    assert qemu_of(podman.runv_root, cid)
    podman("rm", "--force", "doomed", check=True)
    assert gone(podman, "doomed")
    assert cid not in runv_ids(podman.runv_root) and qemu_of(podman.runv_root, cid) is None


def test_rm_force_after_the_vm_was_killed(podman):
    cid = podman("run", "-d", "--name", "crashed", IMAGE, "sleep", "1000", check=True).stdout.strip()
    qemu = qemu_of(podman.runv_root, cid)
    assert qemu
    os.kill(qemu, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while podman.inspect("crashed", "{{.State.Status}}") == "running":
        assert time.monotonic() < deadline, "podman never saw the container stop"
        time.sleep(0.2)
    podman("rm", "--force", "crashed", check=True)
    assert gone(podman, "crashed")
    assert cid not in runv_ids(podman.runv_root) and qemu_of(podman.runv_root, cid) is None


def test_missing_program_fails_as_with_runc(podman):
    before = runv_ids(podman.runv_root)
    result = podman("run", "--rm", IMAGE, "/no/such/program")
    assert result.returncode == 127  # podman's "command not found", from runv's create error
    assert 'runv: exec: "/no/such/program": stat /no/such/program: no such file or directory' in result.stderr
    result = podman("run", "--rm", IMAGE, "no-such-program")
    assert result.returncode == 127
    assert 'exec: "no-such-program": executable file not found in $PATH' in result.stderr
    assert runv_ids(podman.runv_root) == before


def test_runv_error_is_shown_verbatim(podman, tmp_path):
    before = runv_ids(podman.runv_root)
    missing = tmp_path / "no-kernel"
    result = podman("--runtime-flag", f"kernel={missing}", "run", "--rm", IMAGE, "true")
    assert result.returncode != 0
    assert f"runv: guest kernel {missing} does not exist: run `runv guest build` (or pass --kernel)" in result.stderr
    assert runv_ids(podman.runv_root) == before


def test_vm_that_fails_to_boot_gives_a_useful_error_not_a_hang(podman, tmp_path):
    broken = tmp_path / "kernel"
    broken.write_bytes(os.urandom(4096))
    before = runv_ids(podman.runv_root)
    started = time.monotonic()
    result = podman("--runtime-flag", f"kernel={broken}", "run", "--rm", "--name", "noboot", IMAGE, "true", timeout=150)
    assert result.returncode != 0 and time.monotonic() - started < 120
    assert "runv: the VM of container" in result.stderr and "exited during boot: qemu" in result.stderr, result.stderr
    assert gone(podman, "noboot")
    assert runv_ids(podman.runv_root) == before


def test_memory_and_cpus_size_the_vm(podman):
    """``--memory 512m --cpus 2``: the guest has the memory and both CPUs (a VM of that size
    boots cold: no template has it), the container's cgroup in the guest the limits, and
    the VMM runs under podman's cgroupsPath (``/libpod_parent/libpod-ID``) on the host,
    whose leaf runv made and removes with the container."""
    cid = podman("run", "-d", "--name", "sized", "--memory", "512m", "--cpus", "2", IMAGE, "sleep", "1000",
                 check=True, timeout=240).stdout.strip()
    try:
        script = "grep MemTotal /proc/meminfo; nproc; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max"
        result = podman("exec", "sized", "sh", "-c", script)
        assert result.returncode == 0, result.stderr
        _, total_kb, _, cpus, limit, quota, period = result.stdout.split()
        assert int(total_kb) << 10 >= 512 << 20 and cpus == "2"
        assert limit == str(512 << 20) and (quota, period) == ("200000", "100000")
        lines = Path(f"/proc/{qemu_of(podman.runv_root, cid)}/cgroup").read_text().splitlines()
        placed = {line.split(":")[1]: line.split(":", 2)[2] for line in lines if line.split(":")[1] in ("memory", "pids")}
        assert len(placed) == 2 and all(p.startswith(f"/libpod_parent/libpod-{cid}/") for p in placed.values()), placed
    finally:
        podman("rm", "--force", "sized")
    for controller in ("memory", "pids"):
        assert not Path(f"/sys/fs/cgroup/{controller}/libpod_parent/libpod-{cid}").exists()


def test_stats_see_the_cpu_a_spinning_container_burns(podman):
    """``podman stats`` reads the container's host cgroup: the VM running a busy loop is the
    container's CPU time there, at most the one core its quota allows."""
    podman("run", "-d", "--name", "spin", "--cpus", "1", IMAGE, "sh", "-c", "while :; do :; done", check=True, timeout=240)

    def cpu_seconds() -> tuple[float, float]:
        shown = podman("stats", "--no-stream", "--format", "{{.CPUNano}}", "spin", check=True).stdout
        return int(shown) / 1e9, time.monotonic()

    try:
        used, at = cpu_seconds()
        time.sleep(4)
        later, now = cpu_seconds()
        rate = (later - used) / (now - at)
        print(f"podman stats: {later:.1f} s of CPU, {rate:.2f} cores lately")
        assert 0.4 < rate <= 1.1, rate
    finally:
        podman("rm", "--force", "spin")


def test_update_memory_of_a_running_container_is_seen_inside(podman):
    """``podman update --memory``: runv update grows the VM (memory hot-plug) and writes the
    container's cgroup in the guest; the guest sees both."""
    podman("run", "-d", "--name", "upd", "--memory", "128m", IMAGE, "sleep", "1000", check=True, timeout=240)
    try:
        script = "grep MemTotal /proc/meminfo; cat /sys/fs/cgroup/memory.max"
        before = podman("exec", "upd", "sh", "-c", script, check=True).stdout.split()
        assert before[-1] == str(128 << 20)
        result = podman("update", "--memory", "768m", "--memory-swap", "768m", "upd")
        assert result.returncode == 0, result.stderr
        after = podman("exec", "upd", "sh", "-c", script, check=True).stdout.split()
        assert after[-1] == str(768 << 20) and int(after[1]) << 10 > 768 << 20, (before, after)
    finally:
        podman("rm", "--force", "upd")


def test_a_pod_is_one_vm_whose_containers_talk_over_loopback(podman, base_rootfs, tmp_path):
    """``podman pod create`` + containers ``--pod``: the infra container boots the pod's one
    VM (CRI-O's sandbox annotations name it), each container joins it with its own rootfs,
    shim and PID, exec'd and stopped on its own; ``pod rm`` leaves nothing."""
    pause = "localhost/runv-pause:latest"  # the infra image: podman's own pause image needs catatonit
    podman("import", "--change", 'CMD ["sleep", "100000"]', rootfs_tar(base_rootfs, tmp_path / "pause.tar"), pause, check=True)
    others, other_ids = set(vm_processes_in(podman.runv_root)), set(runv_ids(podman.runv_root))  # the module's box
    podman("pod", "create", "--name", "vmpod", "--infra-image", pause, check=True)
    try:
        serve = "mkdir -p /www && echo served-in-the-pod > /www/index.html && exec httpd -f -p 8080 -h /www"
        podman("run", "-d", "--pod", "vmpod", "--name", "web", IMAGE, "sh", "-c", serve, check=True)
        fetch = "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1"
        result = podman("run", "--rm", "--pod", "vmpod", IMAGE, "sh", "-c", fetch)
        assert (result.returncode, result.stdout) == (0, "served-in-the-pod\n"), result.stderr
        assert len(set(vm_processes_in(podman.runv_root)) - others) == 1
        infra = podman.inspect("vmpod", "{{.InfraContainerID}}")
        pids = {podman.inspect(name, "{{.State.Pid}}") for name in (infra, "web")}
        assert len(pids) == 2 and "0" not in pids  # a shim, so a PID, of each its own
        assert podman("exec", "web", "cat", "/www/index.html", check=True).stdout == "served-in-the-pod\n"
        assert podman("exec", infra, "ls", "/www").returncode != 0  # its own rootfs
        podman("stop", "--time", "2", "web", check=True)
        assert podman.inspect(infra, "{{.State.Status}}") == "running"  # the pod lives on without it
        assert podman("exec", infra, "true").returncode == 0
    finally:
        podman("pod", "rm", "--force", "vmpod", timeout=120)
    assert set(vm_processes_in(podman.runv_root)) == others and set(runv_ids(podman.runv_root)) == other_ids


def test_oom_killed_says_what_it_says_for_runc(podman):
    """A container of 32 MiB that allocates 100 MiB: killed (137) under both runtimes, and
    ``State.OOMKilled`` (conmon's watch on the memory cgroup of the container's PID) as
    Podman says it for runc in the same test: the shim repeats the guest's kill there
    (runv.vm.oommirror)."""
    said = {}
    for runtime in (shutil.which("runc"), "runv"):
        name = f"oom-{Path(runtime).name}"
        ran = podman("--runtime", runtime, "run", "--name", name, "--memory", "32m", IMAGE,
                     "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1", timeout=240)
        assert ran.returncode == 137, (runtime, ran.stderr)
        said[Path(runtime).name] = podman.inspect(name, "{{.State.OOMKilled}}")
        podman("rm", name, check=True)
    print(f"podman OOMKilled: {said}")
    assert said["runv"] == said["runc"], said

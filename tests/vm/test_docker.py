"""Docker (Debian's docker.io, 20.10) runs containers with runv, registered as the runtime
``runv`` in a daemon.json: the test starts its own dockerd (data root, exec root, pid
file, socket and daemon.json under a temporary directory; docker's own managed
containerd under that exec root; no iptables rules, no bridge, its own cgroup parent)
and loads a ``docker save`` tarball of the busybox rootfs (no registry is reachable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from realclients import PtySession, cgroups_of, docker_archive, mounts_under, qemu_of, remove_cgroups, run, runv_ids, stop_daemon, wait_for_daemon

from runv.testing import process_tree, vm_processes_in
from runv.testing.host import RUNV

DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")  # Debian's client: another docker earlier on PATH may speak another API
IMAGE = "localhost/runv-busybox:latest"
CGROUPS = Path("/sys/fs/cgroup")

pytestmark = [
    pytest.mark.usefixtures("guest_image"),
    pytest.mark.skipif(
        not DOCKERD.exists() or not DOCKER.exists() or os.geteuid() != 0,
        reason="needs root and Debian's docker.io (scripts/install installs it)",
    ),
]


class Docker:
    """``docker`` against the test's own dockerd. The runc shim runs runv with
    ``--root <exec-root>/runtime-runc/moby`` (dockerd 20.10 names that root after the
    shim's runc options, whatever the runtime's name)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.exec_root = base / "exec"
        self.runv_root = self.exec_root / "runtime-runc/moby"
        self.cgroup_parent = base.name  # the containers' cgroupsPath: /<this>/<id> (cgroupfs), one per test run

    def argv(self, *args) -> list[str]:
        return [DOCKER, "--host", f"unix://{self.base}/docker.sock", *map(str, args)]

    def __call__(self, *args, check=False, timeout=180) -> subprocess.CompletedProcess:
        result = run(self.argv(*args), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr}")
        return result

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name, check=True).stdout.strip()

    def run_detached(self, name: str, *args) -> str:
        return self("run", "--runtime", "runv", "-d", "--name", name, *args, check=True).stdout.strip()


def _docker_network_changes() -> list[str]:
    """What a dockerd allowed to touch the host's network would have made."""
    made = [name for name in os.listdir("/sys/class/net") if name.startswith(("docker", "br-", "veth"))]
    for table in ("filter", "nat"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        made += [line for line in rules.splitlines() if "DOCKER" in line]
    return made


@pytest.fixture(scope="module")
def docker(guest_image, base_rootfs):
    base = Path(tempfile.mkdtemp(prefix="runv-docker-"))  # short: unix socket paths live under it
    client = Docker(base)
    run_docker_existed = os.path.exists("/run/docker")  # dockerd makes /run/docker/plugins whatever its exec root
    network_before = _docker_network_changes()
    config = {
        "runtimes": {"runv": {"path": RUNV}},
        "iptables": False,
        "ip-masq": False,
        "bridge": "none",
        "cgroup-parent": "/" + client.cgroup_parent,
        "deprecated-key-path": str(base / "key.json"),  # not /etc/docker/key.json
    }
    (base / "daemon.json").write_text(json.dumps(config))
    log = open(base / "dockerd.log", "wb")
    argv = [
        DOCKERD,
        "--config-file",
        base / "daemon.json",
        "--data-root",
        base / "data",
        "--exec-root",
        client.exec_root,
        "--pidfile",
        base / "docker.pid",
        "--host",
        f"unix://{base}/docker.sock",
    ]
    proc = subprocess.Popen(list(map(str, argv)), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    containerd_socket = client.exec_root / "containerd/containerd.sock"  # the containerd dockerd starts and stops

    def stop() -> None:
        stop_daemon(proc, containerd_socket)
        log.close()
        for point in mounts_under(base):
            subprocess.run(["umount", "-l", point], capture_output=True)
        remove_cgroups(client.cgroup_parent)  # the cgroup parent runv made the containers' paths in
        if not run_docker_existed:
            shutil.rmtree("/run/docker", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)

    wait_for_daemon("dockerd", proc, lambda: client("version").returncode == 0, base / "dockerd.log", stop, 60)
    client("load", "--input", docker_archive(base_rootfs, base / "image.tar", IMAGE), check=True)
    try:
        yield client
    finally:
        client("rm", "--force", *client("ps", "--all", "--quiet").stdout.split())
        left = runv_ids(client.runv_root)
        vms = vm_processes_in(client.exec_root)
        stop()
        assert not left, f"docker left runv containers behind: {left}"
        assert not vms, "VM processes left behind"
        assert _docker_network_changes() == network_before, "dockerd changed the host's network"


def test_daemon_lists_runv(docker):
    assert "runv" in json.loads(docker("info", "--format", "{{json .Runtimes}}", check=True).stdout)


def test_run_output_and_exit_code(docker):
    result = docker("run", "--runtime", "runv", "--rm", IMAGE, "echo", "hi")
    assert result.returncode == 0 and result.stdout == "hi\n", result.stderr
    result = docker("run", "--runtime", "runv", "--rm", IMAGE, "sh", "-c", "echo err >&2; exit 3")
    assert result.returncode == 3 and result.stderr == "err\n", result.stderr
    assert runv_ids(docker.runv_root) == []  # --rm deleted it through runv


def test_run_tty(docker):
    session = PtySession(docker.argv("run", "--runtime", "runv", "--rm", "-it", IMAGE, "sh"), rows=24, cols=90)
    session.check_shell(b"/dev/pts/0", 6, prompt_timeout=120)


def test_detached_exec_pause_top_stop_rm(docker):
    # PID 1 of its PID namespace gets only the signals it handles: TERM as TERM's default would
    cid = docker.run_detached("box", IMAGE, "sh", "-c", "trap 'exit 143' TERM; sleep 100000 & wait")
    assert docker.inspect("box", "{{.State.Status}}") == "running"
    assert (docker.runv_root / cid).is_dir()  # runv honours the shim's --root

    result = docker("exec", "box", "sh", "-c", "echo in-exec; exit 5")
    assert result.returncode == 5 and result.stdout == "in-exec\n", result.stderr

    session = PtySession(docker.argv("exec", "-it", "box", "sh"), rows=20, cols=70)
    session.check_shell(b"/dev/pts/", 4)

    docker("pause", "box", check=True)
    assert docker.inspect("box", "{{.State.Status}}") == "paused"
    docker("unpause", "box", check=True)
    assert docker("exec", "box", "echo", "back", check=True).stdout == "back\n"

    # runv ps --format json: the host PIDs of the container's shim and its VMM, which
    # docker looks up in the host's ps
    top = docker("top", "box", check=True).stdout.splitlines()
    assert top[0].split()[:2] == ["UID", "PID"]
    pids = {int(line.split()[1]) for line in top[1:]}
    assert qemu_of(docker.runv_root, cid) in pids and any("qemu-system" in line for line in top[1:]), top
    shim = json.loads((docker.runv_root / cid / "state.json").read_text())["shim_pid"]
    assert pids <= set(process_tree(shim)), top  # the container's own processes only, never the host's

    started = time.monotonic()
    docker("stop", "--time", "30", "box", check=True)
    assert time.monotonic() - started < 30  # TERM ended it, no KILL after the timeout
    assert docker.inspect("box", "{{.State.ExitCode}}") == "143"
    docker("rm", "box", check=True)
    assert runv_ids(docker.runv_root) == [] and not (docker.runv_root / cid).exists()
    assert qemu_of(docker.runv_root, cid) is None and not vm_processes_in(docker.exec_root)


def test_stop_kills_a_container_that_ignores_term(docker):
    cid = docker.run_detached("stubborn", IMAGE, "sh", "-c", 'trap "" TERM; echo ready; while true; do sleep 1; done')
    deadline = time.monotonic() + 60
    while "ready" not in docker("logs", "stubborn").stdout:
        assert time.monotonic() < deadline, "the container never said ready"
        time.sleep(0.2)
    started = time.monotonic()
    docker("stop", "--time", "2", "stubborn", check=True)
    assert 2 <= time.monotonic() - started < 60
    assert docker.inspect("stubborn", "{{.State.ExitCode}}") == "137"  # KILLed after TERM did nothing
    docker("rm", "stubborn", check=True)
    assert cid not in runv_ids(docker.runv_root) and qemu_of(docker.runv_root, cid) is None


def test_memory_and_cpus_size_the_vm(docker):
    """``--memory 512m --cpus 2``: the guest has the memory and both CPUs, the container's
    cgroup in the guest the limits."""
    script = "grep MemTotal /proc/meminfo; nproc; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max"
    result = docker("run", "--runtime", "runv", "--rm", "--memory", "512m", "--cpus", "2", IMAGE, "sh", "-c", script, timeout=240)
    assert result.returncode == 0, result.stderr
    _, total_kb, _, cpus, limit, quota, period = result.stdout.split()
    assert int(total_kb) << 10 >= 512 << 20 and cpus == "2"
    assert limit == str(512 << 20) and (quota, period) == ("200000", "100000")


def test_stats_see_the_cpu_a_spinning_container_burns(docker):
    """``docker stats`` reads the container's host cgroup (containerd's shim loads the cgroup
    of the container's PID, runv's shim, where the VMM runs too): a VM spinning a core is
    the container's CPU there (one core: its quota, ``--cpus 1``, is tested against runc's
    in tests/vm/test_vm_size.py; docker's percentages of it read 110-145 % here, where the
    cgroup's own usage grows 0.97 s a second: its sample is too coarse to hold it to)."""
    docker.run_detached("spin", "--cpus", "1", IMAGE, "sh", "-c", "while :; do :; done")
    try:
        time.sleep(3)  # the guest's loop runs; docker's sample spans the last second
        shown = [docker("stats", "--no-stream", "--format", "{{.CPUPerc}}", "spin", check=True).stdout.strip()
                 for _ in range(3)]
        print(f"docker stats: {shown}")
        assert all(float(cpu.rstrip("%")) >= 50.0 for cpu in shown), shown
    finally:
        docker("rm", "--force", "spin")


def test_oom_killed_says_what_it_says_for_runc(docker):
    """A container of 32 MiB that allocates 100 MiB: killed (137) under both runtimes, and
    ``State.OOMKilled`` as containerd's shim learns it from the host cgroup of the
    container's PID, measured for runc in the same test. Under runv the guest's kernel
    kills, and the shim repeats the kill in that host cgroup (runv.vm.oommirror)."""
    said = {}
    for runtime in ("runc", "runv"):
        name = f"oom-{runtime}"
        ran = docker("run", "--runtime", runtime, "--name", name, "--memory", "32m", IMAGE,
                     "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1", timeout=240)
        assert ran.returncode == 137, (runtime, ran.stderr)
        said[runtime] = docker.inspect(name, "{{.State.OOMKilled}}")
        docker("rm", name, check=True)
    print(f"docker OOMKilled: {said}")
    assert said["runv"] == said["runc"], said


def test_update_memory_of_a_running_container(docker):
    """``docker update`` writes the container's cgroup in the guest; a limit no VM here can
    hold is refused, in runv's words, and changes nothing. On the host the VMM is in the
    cgroupsPath docker gave (under the daemon's cgroup-parent), which goes with the container."""
    cid = docker.run_detached("resized", IMAGE, "sleep", "100000")
    host_cgroup = f"/{docker.cgroup_parent}/{cid}"
    # the VMM in a cgroup of its own below it (docs/resources.md)
    assert any(path.startswith(host_cgroup + "/") for path in cgroups_of(qemu_of(docker.runv_root, cid)))
    # docker itself wants --memory-swap with --memory for a container started without either
    docker("update", "--memory", "128m", "--memory-swap", "128m", "resized", check=True)
    assert docker("exec", "resized", "cat", "/sys/fs/cgroup/memory.max", check=True).stdout == f"{128 << 20}\n"

    # 1 TiB: more than any VM of this host may have (docs/resources.md: max_memory_mib)
    refused = docker("update", "--memory", "1t", "--memory-swap", "1t", "resized")
    assert refused.returncode != 0 and "runv: " in refused.stderr and "above the maximum" in refused.stderr, refused.stderr
    assert docker("exec", "resized", "cat", "/sys/fs/cgroup/memory.max", check=True).stdout == f"{128 << 20}\n"
    docker("rm", "--force", "resized", check=True)
    assert not any((CGROUPS / controller / host_cgroup.lstrip("/")).exists() for controller in ("", "memory", "pids"))


def test_network_container_joins_the_first_containers_vm(docker):
    """``--network container:X``: the second container joins X's VM (its namespace is that
    of X's shim), reaches X over 127.0.0.1, has its own PID, and goes on its own."""
    serve = "mkdir -p /www && echo served-by-web > /www/index.html && exec httpd -f -p 8080 -h /www"
    web = docker.run_detached("web", IMAGE, "sh", "-c", serve)
    try:
        fetch = "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1"
        result = docker("run", "--runtime", "runv", "--rm", "--network", "container:web", IMAGE, "sh", "-c", fetch)
        assert (result.returncode, result.stdout) == (0, "served-by-web\n"), result.stderr
        side = docker.run_detached("side", "--network", "container:web", IMAGE, "sleep", "100000")
        assert len(vm_processes_in(docker.exec_root)) == 1  # one VM for both
        assert json.loads((docker.runv_root / side / "state.json").read_text())["sandbox"] == web
        assert docker.inspect("side", "{{.State.Pid}}") != docker.inspect("web", "{{.State.Pid}}")
        assert docker("exec", "side", "ls", "/www").returncode != 0  # its own rootfs
        docker("rm", "--force", "side", check=True)
        assert docker.inspect("web", "{{.State.Status}}") == "running"
    finally:
        docker("rm", "--force", "side")
        docker("rm", "--force", "web", check=True)
    assert runv_ids(docker.runv_root) == [] and not vm_processes_in(docker.exec_root)

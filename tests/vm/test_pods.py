"""Pods: containers that join the VM of a running container, as Podman pods, Docker's
``--network container:X`` and CRI pods make them, with real VMs (one per pod)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from realclients import mounts_under

from runv.testing import vm_processes_in
from runv.testing.host import OomWatch

pytestmark = pytest.mark.usefixtures("guest_image")


@pytest.fixture
def netns():
    """A named network namespace with only its loopback, removed at the end."""
    name = f"rvpod{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def in_netns(path: str) -> dict:
    return {"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                                     {"type": "network", "path": path}]}}


def status(runv, cid) -> str:
    return json.loads(runv("state", cid, check=True).stdout)["status"]


def wait_status(runv, cid, wanted, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while status(runv, cid) != wanted:
        assert time.monotonic() < deadline, f"{cid} never became {wanted}"
        time.sleep(0.2)


def test_a_pod_is_one_vm_whose_containers_talk_over_loopback(runv, make_bundle, netns, root, tmp_path):
    infra = make_bundle(["sleep", "1000"], name="infra", **in_netns(netns))
    server = make_bundle(["sh", "-c", "trap 'exit 3' TERM; httpd -f -p 8080 -h /www & wait"], name="server", **in_netns(netns))
    (server / "rootfs/www").mkdir()
    (server / "rootfs/www/index.html").write_text("served by the second container\n")
    (server / "rootfs/marker").write_text("server's rootfs\n")
    client = make_bundle(["sh", "-c", "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1"],
                         name="client", **in_netns(netns))

    assert runv("run", "-d", "--bundle", infra, "infra").returncode == 0
    created = runv("create", "--bundle", server, "server")
    assert created.returncode == 0, created.stderr
    assert json.loads(runv("state", "server", check=True).stdout)["pid"] != json.loads(runv("state", "infra").stdout)["pid"]
    assert runv("start", "server").returncode == 0
    assert len(vm_processes_in(root)) == 1  # the pod's one VM

    result = runv("run", "--bundle", client, "client")
    assert (result.returncode, result.stdout) == (0, "served by the second container\n"), result.stderr

    # each container has its own rootfs and PID namespace in the VM
    assert runv("exec", "server", "cat", "/marker").stdout == "server's rootfs\n"
    seen = runv("exec", "infra", "ps", "-o", "args")
    assert "sleep 1000" in seen.stdout and "httpd" not in seen.stdout, seen.stdout
    assert runv("exec", "infra", "cat", "/marker").returncode != 0

    refused = runv("delete", "infra")
    assert refused.returncode != 0 and "(server run in its VM: delete --force stops them too)" in refused.stderr, refused.stderr

    runv("kill", "server", "TERM", check=True)
    wait_status(runv, "server", "stopped")
    assert json.loads((root / "server/state.json").read_text())["exit_code"] == 3
    assert status(runv, "infra") == "running"  # the pod lives on without it
    assert runv("delete", "server").returncode == 0
    assert not mounts_under(root / "infra" / "pod" / "server")

    runv("kill", "infra", "KILL", check=True)
    wait_status(runv, "infra", "stopped")
    assert runv("delete", "infra").returncode == 0
    assert not vm_processes_in(root) and not mounts_under(root)


def test_a_member_is_killed_paused_and_deleted_on_its_own(runv, make_bundle, netns, root):
    infra = make_bundle(["sleep", "1000"], name="infra", **in_netns(netns))
    worker = make_bundle(["sh", "-c", "while :; do date +%s%N > /tmp/tick; sleep 0.1; done"], name="worker", **in_netns(netns))
    assert runv("run", "-d", "--bundle", infra, "infra").returncode == 0
    assert runv("run", "-d", "--bundle", worker, "worker").returncode == 0

    runv("pause", "worker", check=True)
    assert status(runv, "worker") == "paused"
    frozen = (worker / "rootfs/tmp/tick").read_text()
    time.sleep(1.0)
    assert (worker / "rootfs/tmp/tick").read_text() == frozen
    runv("resume", "worker", check=True)
    time.sleep(1.0)
    assert (worker / "rootfs/tmp/tick").read_text() != frozen

    runv("kill", "worker", "KILL", check=True)
    wait_status(runv, "worker", "stopped")
    assert status(runv, "infra") == "running"
    assert runv("delete", "worker").returncode == 0

    joined = runv("create", "--bundle", worker, "again")  # the pod takes new members after one left
    assert joined.returncode == 0, joined.stderr
    assert runv("delete", "--force", "again").returncode == 0
    assert runv("delete", "--force", "infra").returncode == 0
    assert not vm_processes_in(root) and not mounts_under(root)


def test_joining_a_paused_or_missing_sandbox_fails_cleanly(runv, make_bundle, netns, root):
    infra = make_bundle(["sleep", "1000"], name="infra", **in_netns(netns))
    late = make_bundle(["true"], name="late", **in_netns(netns))
    assert runv("run", "-d", "--bundle", infra, "infra").returncode == 0
    runv("pause", "infra", check=True)
    refused = runv("create", "--bundle", late, "late")
    assert refused.returncode != 0 and "infra" in refused.stderr and "paused" in refused.stderr, refused.stderr
    assert not (root / "late").exists()
    runv("resume", "infra", check=True)

    annotated = make_bundle(["true"], name="cri", annotations={"io.kubernetes.cri.container-type": "container",
                                                                "io.kubernetes.cri.sandbox-id": "nosuchpod"})
    missing = runv("create", "--bundle", annotated, "cri")
    assert missing.returncode != 0 and "nosuchpod" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert not (root / "cri").exists()
    assert runv("delete", "--force", "infra").returncode == 0
    assert not vm_processes_in(root) and not mounts_under(root)


def test_an_oom_kill_in_a_member_is_repeated_in_the_members_host_cgroup_only(runv, make_bundle, netns, root):
    """What Kubernetes reads as a container's ``OOMKilled`` (containerd's watch on the memory
    cgroup of its PID): a member of 32 MiB whose process allocates 100 MiB is killed in the
    pod's VM, and the kill is repeated in the member's host cgroup, not the sandbox's."""
    def bundle(name, args, **linux):
        spec = in_netns(netns)
        spec["linux"].update(cgroupsPath=f"/runv-test-pod-{name}-{os.getpid()}", **linux)
        return make_bundle(args, name=name, **spec)

    assert runv("run", "-d", "--bundle", bundle("infra", ["sleep", "1000"]), "infra").returncode == 0
    hog = bundle("hog", ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"], resources={"memory": {"limit": 32 << 20}})
    assert runv("create", "--bundle", hog, "hog").returncode == 0
    watches = {cid: OomWatch(json.loads(runv("state", cid, check=True).stdout)["pid"]) for cid in ("infra", "hog")}
    try:
        runv("start", "hog", check=True)
        wait_status(runv, "hog", "stopped")
        assert json.loads((root / "hog/state.json").read_text())["exit_code"] == 137
        assert watches["hog"].fired(timeout=10) and watches["hog"].kills() == 1
        assert watches["infra"].kills() == 0 and status(runv, "infra") == "running"
    finally:
        for watch in watches.values():
            watch.close()
    assert runv("delete", "hog").returncode == 0
    assert runv("delete", "--force", "infra").returncode == 0

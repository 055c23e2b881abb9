"""Kubernetes' path: containerd 1.6's CRI plugin runs a pod with runv as a runtime handler
(the runc shim with ``BinaryName``, as docs/integration.md configures it), driven over its
CRI socket as the kubelet drives it (:mod:`cri`). The test starts its own containerd
(config, root, state and socket under a temporary directory), with a CNI bridge network
of its own (``runvcri0``, removed after) and the pod's cgroup parent of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import cri
import grpc
import pytest
from realclients import cgroups_of, containerd_config, mounts_under, oci_archive, remove_cgroups, run, runv_ids, stop_daemon, wait_for_daemon

from runv.testing import vm_processes_in
from runv.testing.host import RUNV

CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
IMAGE = "localhost/runv-busybox:latest"
PAUSE = "localhost/runv-pause:latest"  # the sandbox image (registry.k8s.io's pause is not reachable)
BRIDGE, SUBNET, GATEWAY = "runvcri0", "10.89.77.0/24", "10.89.77.1"
CGROUPS = Path("/sys/fs/cgroup")

pytestmark = [
    pytest.mark.usefixtures("guest_image"),
    pytest.mark.skipif(
        CONTAINERD is None or CTR is None or not (CNI_BIN / "bridge").exists() or os.geteuid() != 0,
        reason="needs root, containerd and the CNI plugins (scripts/install installs them)",
    ),
]

CRI_TABLES = """
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{base}/cni"

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runv"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv.options]
  BinaryName = "{runv}"
  Root = "{base}/runv"
"""

CNI = """\
{{"cniVersion": "0.4.0", "name": "runv-cri", "plugins": [
  {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{subnet}", "gateway": "{gateway}"}}]],
             "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{base}/ipam"}}}}]}}
"""


class Kubelet:
    """What a kubelet asks of the CRI plugin for one pod of runtime class ``runv``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.runtime = cri.RuntimeService(base / "containerd.sock")
        self.runv_root = base / "runv"  # the runc shim's Root, plus the namespace: k8s.io
        self.cgroup_parent = base.name  # the pod's cgroupsPath: /<this>/<container id> (cgroupfs)

    def sandbox_config(self, name: str) -> dict:
        return {
            "metadata": {"name": name, "uid": f"uid-{name}", "namespace": "default"},
            "hostname": name,
            "log_directory": str(self.base / "logs" / name),
            "linux": {"cgroup_parent": f"/{self.cgroup_parent}",
                      "security_context": {"namespace_options": {"network": cri.POD, "pid": cri.CONTAINER, "ipc": cri.POD}}},
        }

    def run_pod(self, name: str) -> tuple[str, dict]:
        config = self.sandbox_config(name)
        return self.runtime.RunPodSandbox(config=config, runtime_handler="runv").pod_sandbox_id, config

    def start_container(self, pod: str, pod_config: dict, name: str, command: list[str]) -> str:
        config = {"metadata": {"name": name}, "image": {"image": IMAGE}, "command": command, "log_path": f"{name}.log",
                  "envs": [{"key": "PATH", "value": "/bin"}]}
        cid = self.runtime.CreateContainer(pod_sandbox_id=pod, config=config, sandbox_config=pod_config).container_id
        self.runtime.StartContainer(container_id=cid)
        return cid

    def exec_sync(self, cid: str, *cmd: str, timeout: int = 60):
        return self.runtime.ExecSync(container_id=cid, cmd=list(cmd), timeout=timeout)

    def ctr(self, *args) -> subprocess.CompletedProcess:
        return run([CTR, "--address", self.base / "containerd.sock", "--namespace", "k8s.io", *args])


def _left_on_host(base: Path) -> dict:
    """What a pod may leave on the host: network namespaces, veths on the test's bridge, mounts."""
    netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    ports = sorted(os.listdir(f"/sys/class/net/{BRIDGE}/brif")) if os.path.isdir(f"/sys/class/net/{BRIDGE}") else []
    return {"netns": netns, "bridge ports": ports, "mounts": mounts_under(base)}


@pytest.fixture(scope="module")
def kubelet(base_rootfs):
    base = Path(tempfile.mkdtemp(prefix="runv-cri-"))  # short: unix socket paths live under it
    (base / "cni").mkdir()
    (base / "cni/10-runv-cri.conflist").write_text(CNI.format(bridge=BRIDGE, subnet=SUBNET, gateway=GATEWAY, base=base))
    tables = CRI_TABLES.format(base=base, pause=PAUSE, cni_bin=CNI_BIN, runv=RUNV)
    (base / "config.toml").write_text(containerd_config(base, tables=tables))
    log = open(base / "containerd.log", "wb")
    proc = subprocess.Popen([CONTAINERD, "--config", str(base / "config.toml")], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    client = Kubelet(base)

    def cleanup() -> None:
        client.runtime.close()
        stop_daemon(proc, base / "containerd.sock")
        log.close()
        for point in mounts_under(base):
            subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        remove_cgroups(client.cgroup_parent)  # the cgroup parent runv made the containers' paths in
        shutil.rmtree(base, ignore_errors=True)

    wait_for_daemon("containerd", proc, lambda: client.ctr("version").returncode == 0, base / "containerd.log", cleanup, 30)
    try:  # containerd serves: its CRI plugin must too (a config it refuses is this test's fault, not the host's)
        version = client.runtime.Version(version="v1").runtime_api_version
    except grpc.RpcError as exc:
        version = exc.details()
    if version != "v1":
        failed = [line for line in (base / "containerd.log").read_text().splitlines() if "grpc.v1.cri" in line and "level=warn" in line]
        cleanup()
        raise AssertionError(f"containerd's CRI plugin does not serve ({version}): {failed}")
    for image, cmd in ((IMAGE, ("sh",)), (PAUSE, ("sleep", "1000000"))):
        imported = client.ctr("images", "import", oci_archive(base_rootfs, base / "image.tar", image, cmd))
        assert imported.returncode == 0, imported.stderr
    before = _left_on_host(base)
    try:
        yield client
    finally:
        for line in client.ctr("containers", "ls", "--quiet").stdout.split():
            client.ctr("task", "kill", "--signal", "KILL", line)
        left = runv_ids(client.runv_root / "k8s.io")
        vms = vm_processes_in(client.runv_root)
        after = _left_on_host(base)
        cleanup()
        assert not left, f"the CRI plugin left runv containers behind: {left}"
        assert not vms, "VM processes left behind"
        assert after == before, "a pod left something on the host"


def test_a_pod_is_one_vm_whose_containers_reach_each_other(kubelet):
    """RunPodSandbox boots the pod's VM with the pause container; two containers join it
    (CRI's annotations), one serves on 127.0.0.1 and the pod's IP, the other reads it;
    ExecSync, logs, a container stopped and removed on its own; StopPodSandbox and
    RemovePodSandbox leave nothing."""
    pod, config = kubelet.run_pod("web-pod")
    try:
        status = kubelet.runtime.PodSandboxStatus(pod_sandbox_id=pod).status
        assert status.state == 0 and status.network.ip.startswith(GATEWAY.rsplit(".", 1)[0] + ".")  # SANDBOX_READY, on the CNI bridge
        serve = "mkdir -p /www && echo served-in-the-pod > /www/index.html && echo serving && exec httpd -f -p 8080 -h /www"
        web = kubelet.start_container(pod, config, "web", ["sh", "-c", serve])
        client = kubelet.start_container(pod, config, "client", ["sleep", "100000"])
        assert len(vm_processes_in(kubelet.runv_root)) == 1  # the pause container's VM, nobody else's

        fetch = "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1"
        reply = kubelet.exec_sync(client, "sh", "-c", fetch)
        assert (reply.exit_code, reply.stdout) == (0, b"served-in-the-pod\n"), reply.stderr
        with urllib.request.urlopen(f"http://{status.network.ip}:8080/", timeout=30) as page:  # the pod's IP, from the host
            assert page.read() == b"served-in-the-pod\n"
        failed = kubelet.exec_sync(web, "sh", "-c", "echo to-stderr >&2; exit 7")
        assert (failed.exit_code, failed.stderr) == (7, b"to-stderr\n")
        hostnames = {kubelet.exec_sync(cid, "hostname").stdout for cid in (web, client)}
        assert hostnames == {b"web-pod\n"}
        assert b"httpd" in kubelet.exec_sync(web, "ps").stdout
        assert b"httpd" not in kubelet.exec_sync(client, "ps").stdout  # each container its own PID namespace in the guest

        log = kubelet.base / "logs/web-pod/web.log"
        assert any(line.endswith(" stdout F serving") for line in log.read_text().splitlines()), log.read_text()

        qemu = vm_processes_in(kubelet.runv_root)[0]
        assert any(part.startswith(f"/{kubelet.cgroup_parent}/") for part in cgroups_of(qemu))  # the pod's cgroup parent

        kubelet.runtime.StopContainer(container_id=client, timeout=2)
        assert kubelet.runtime.ContainerStatus(container_id=client).status.state == cri.CONTAINER_EXITED
        kubelet.runtime.RemoveContainer(container_id=client)
        assert kubelet.exec_sync(web, "true").exit_code == 0  # the pod's VM goes on without it
        assert client not in runv_ids(kubelet.runv_root / "k8s.io")
    finally:
        kubelet.runtime.StopPodSandbox(pod_sandbox_id=pod)
        kubelet.runtime.RemovePodSandbox(pod_sandbox_id=pod)
    deadline = time.monotonic() + 30
    while vm_processes_in(kubelet.runv_root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not vm_processes_in(kubelet.runv_root) and not runv_ids(kubelet.runv_root / "k8s.io")

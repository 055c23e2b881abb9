"""The net plugin: real namespaces and veths (made and removed here), wired into real VMs
(the tests marked vm) or refused before any VM.

The host ends of the veths stay in the root namespace with the first address of each
subnet; the container's ends carry what a CNI plugin or Docker would give them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import pytest

pyroute2 = pytest.importorskip("pyroute2")
from pyroute2 import IPRoute, netns  # noqa: E402

from runv.api.errors import RunvError  # noqa: E402
from runv.testing.host import RUNV  # noqa: E402

TUN_TIMEOUT = int(os.environ.get("RUNV_NET_TIMEOUT", 150))  # seconds for a VM test's container to finish (TCG on a shared 2-core host)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def nets():
    """``nets.namespace()`` makes a named netns, ``nets.veth(...)`` a veth pair into it;
    all of them are removed at the end, whatever the test did."""
    made = Nets()
    try:
        yield made
    finally:
        made.cleanup()


class Nets:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.host_links: list[str] = []
        self.tag = f"{os.getpid() % 10000}{int(time.monotonic() * 1000) % 1000}"

    def namespace(self) -> str:
        name = f"rvnt{self.tag}{len(self.names)}"
        netns.create(name)
        self.names.append(name)
        return f"/run/netns/{name}"

    def veth(self, target, inner: str, subnet: int, *, mtu: int = 1500, v6: bool = False, default: bool = True) -> dict:
        """A veth from the root namespace into ``target`` (a netns path or a pid): host end
        10.<subnet>.0.1/24 (+ fd<subnet>::1/64), inner end .2 with a default route via .1."""
        host = f"rvh{self.tag}{len(self.host_links)}"
        self.host_links.append(host)
        peer = {"ifname": inner}
        peer.update({"net_ns_pid": target} if isinstance(target, int) else {"net_ns_fd": target})
        with IPRoute() as ip:
            ip.link("add", ifname=host, kind="veth", peer=peer)
            index = ip.link_lookup(ifname=host)[0]
            ip.addr("add", index=index, address=f"10.{subnet}.0.1", prefixlen=24)
            if v6:
                ip.addr("add", index=index, address=f"fd{subnet:02x}::1", prefixlen=64)
            ip.link("set", index=index, mtu=mtu, state="up")
        path = f"/proc/{target}/ns/net" if isinstance(target, int) else target
        with IPRoute(netns=path, flags=0) as ns:
            index = ns.link_lookup(ifname=inner)[0]
            ns.link("set", index=index, mtu=mtu, state="up")
            ns.addr("add", index=index, address=f"10.{subnet}.0.2", prefixlen=24)
            if v6:
                ns.addr("add", index=index, address=f"fd{subnet:02x}::2", prefixlen=64)
            if default:
                ns.route("add", dst="0.0.0.0/0", gateway=f"10.{subnet}.0.1")
                if v6:
                    ns.route("add", dst="::/0", gateway=f"fd{subnet:02x}::1", family=socket.AF_INET6)
            mac = ns.get_links(index)[0].get("address")
        return {"host": host, "inner": inner, "mac": mac, "host_ip": f"10.{subnet}.0.1", "ip": f"10.{subnet}.0.2"}

    def cleanup(self) -> None:
        with IPRoute() as ip:
            for host in self.host_links:
                for index in ip.link_lookup(ifname=host):
                    try:
                        ip.link("del", index=index)
                    except pyroute2.NetlinkError:
                        pass
        for name in self.names:
            try:
                netns.remove(name)
            except OSError:
                pass


def netns_entry(path: str) -> dict:
    return {"linux": {"namespaces": [{"type": "network", "path": path}]}}


def taps_and_qdiscs(path: str) -> tuple[list, list]:
    """The tun/tap links and ingress qdiscs in the namespace at ``path``."""
    with IPRoute(netns=path, flags=0) as ns:
        taps = [link.get("ifname") for link in ns.get_links() if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun"]
        names = {link["index"]: link.get("ifname") for link in ns.get_links()}
        ingress = [names.get(q["index"]) for q in ns.get_qdiscs() if q.get_attr("TCA_KIND") == "ingress"]
    return taps, ingress


def echo_server(address: str, family=socket.AF_INET) -> tuple[int, list]:
    """A one-shot TCP echo server on the host: echoes one line and closes."""
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, 0))
    server.listen(1)
    server.settimeout(TUN_TIMEOUT)
    got: list = []

    def serve():
        try:
            conn, _ = server.accept()
            with conn:
                data = conn.makefile("rb").readline()
                got.append(data)
                conn.sendall(data)
        except OSError as exc:
            got.append(exc)
        finally:
            server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], got


def talk_to_guest(address: str, port: int, line: bytes, deadline: float) -> bytes:
    """Connects to a guest's listening nc (retrying until it listens) and echoes a line."""
    while True:
        try:
            with socket.create_connection((address, port), timeout=5) as conn:
                conn.sendall(line)
                conn.shutdown(socket.SHUT_WR)
                return conn.makefile("rb").read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# ---------------------------------------------------------------------------- no VM


def test_namespace_validation(tmp_path):
    from runv_net.netns import Namespace

    with pytest.raises(RunvError, match="does not exist"):
        Namespace.open(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("")
    with pytest.raises(RunvError, match="is not a network namespace"):
        Namespace.open(str(tmp_path / "file"))
    with pytest.raises(RunvError, match="is not a network namespace"):
        Namespace.open("/proc/self/ns/uts")
    assert Namespace.open("/proc/self/ns/net").ino == os.stat("/proc/self/ns/net").st_ino


def test_wire_and_unwire_leave_the_veth_as_the_caller_made_it(nets):
    from runv_net import wire
    from runv_net.netns import locate

    path = nets.namespace()
    a = nets.veth(path, "eth0", 81, mtu=1400, v6=True)
    nets.veth(path, "eth1", 82, default=False)
    with IPRoute(netns=path, flags=0) as ns:  # the caller's own ingress qdisc on eth1 must survive
        ns.tc("add", "ingress", ns.link_lookup(ifname="eth1")[0])
    found = {i.name: i for i in wire.scan(path, set())}
    assert set(found) == {"eth0", "eth1"}
    eth0 = found["eth0"]
    assert (eth0.mac, eth0.mtu) == (a["mac"], 1400)
    assert {(x.family, x.address, x.prefixlen) for x in eth0.addresses} == {(4, "10.81.0.2", 24), (6, "fd51::2", 64)}
    assert {(r.family, r.dst, r.gateway) for r in eth0.routes} == {(4, "default", "10.81.0.1"), (6, "default", "fd51::1")}
    links, fds = [], []
    try:
        for number, iface in enumerate(found.values()):
            link, fd = wire.wire(path, iface, number, f"net{number}")
            links.append(link)
            fds.append(fd)
        assert [link.qdisc_created for link in links] == [True, False]
        taps, ingress = taps_and_qdiscs(path)
        assert sorted(taps) == ["tap0_runv", "tap1_runv"]
        assert sorted(ingress) == ["eth0", "eth1", "tap0_runv", "tap1_runv"]
        assert wire.scan(path, {i.index for i in found.values()}) == []  # our taps are never wired
    finally:
        wire.unwire(path, links)
        for fd in fds:
            os.close(fd)
    assert taps_and_qdiscs(path) == ([], ["eth1"])
    st = os.stat(path)
    assert locate(st.st_dev, st.st_ino, "/nonexistent") == path  # found again by inode (mountinfo)


def test_interface_gone_mid_wiring_is_a_clear_error(nets):
    from runv_net import wire

    path = nets.namespace()
    nets.veth(path, "eth0", 83)
    (iface,) = wire.scan(path, set())
    with IPRoute(netns=path, flags=0) as ns:
        ns.link("del", index=iface.index)
    with pytest.raises(RunvError, match="eth0 disappeared from network namespace"):
        wire.wire(path, iface, 0, "net0")
    assert taps_and_qdiscs(path) == ([], [])


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_netns_path_fails_create_cleanly(fake, make_bundle, root, tmp_path, kind):
    path = tmp_path / "ns"
    if kind == "file":
        path.write_text("not a namespace")
    bundle = make_bundle(["true"], **netns_entry(str(path)))
    result = fake("create", "--bundle", bundle, "bad", stdout=subprocess.DEVNULL)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert str(path) in message and ("does not exist" in message or "is not a network namespace" in message)
    assert not (root / "bad").exists()
    assert fake("list", "--quiet").stdout.strip() == ""


# ---------------------------------------------------------------------------- real VMs


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_guest_reaches_the_host_over_the_callers_veth(runv, make_bundle, nets, root, tmp_path):
    """ping, TCP both ways, IPv6 address and default route, MTU 1400, /etc files; the VM
    comes from the session's template (which has no NIC: this one is hot-plugged)."""
    path = nets.namespace()
    v = nets.veth(path, "eth0", 84, mtu=1400, v6=True)
    port, got = echo_server(v["host_ip"])
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.84.0.1\n")
    script = (
        "cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address; ip -6 addr show dev eth0; ip -6 route; "
        f"ping -c 2 -W 10 {v['host_ip']} >/dev/null && echo PING-OK; "
        f"ping -c 1 -s 1372 -W 10 {v['host_ip']} >/dev/null && echo BIG-PING-OK; "
        f"echo guest-to-host | nc -w 10 {v['host_ip']} {port}; "
        "cat /etc/resolv.conf /etc/hosts; "
        "nc -l -p 7000 -e cat; echo DONE"
    )
    bundle = make_bundle(
        ["sh", "-c", script],
        mounts=[{"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv), "options": ["rbind", "ro"]}],
        annotations={"runv.net/hosts": "10.84.0.1 the-host\n"},
        **netns_entry(path),
    )
    out = tmp_path / "out"
    with open(out, "w") as stdout:
        proc = subprocess.Popen(
            [RUNV, "--root", str(root), "--log", str(tmp_path / "runv.log"), "run", "--bundle", str(bundle), "net1"],
            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            echoed = talk_to_guest(v["ip"], 7000, b"host-to-guest\n", time.monotonic() + TUN_TIMEOUT)
            assert proc.wait(TUN_TIMEOUT) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "1400" and lines[1] == v["mac"], text
    assert "inet6 fd54::2/64" in text and "default via fd54::1 dev eth0" in text, text
    assert "PING-OK" in text and "BIG-PING-OK" in text, text
    assert got == [b"guest-to-host\n"] and "guest-to-host" in text, text
    assert echoed == b"host-to-guest\n" and "DONE" in text, text
    assert "nameserver 10.84.0.1" in text and "10.84.0.1 the-host" in text, text
    if os.environ.get("RUNV_TEST_TEMPLATES", "1") != "0":
        assert "VM restored from template test" in (tmp_path / "runv.log").read_text()
    assert taps_and_qdiscs(path) == ([], [])  # run deletes the container: nothing of ours left
    with IPRoute(netns=path, flags=0) as ns:  # and the veth as it was
        (link,) = ns.get_links(ifname="eth0")
        assert (link.get("mtu"), link.get("address")) == (1400, v["mac"])
        assert "10.84.0.2" in [a.get("address") for a in ns.get_addr(index=link["index"])]


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
@pytest.mark.parametrize("template", ["auto", "off"])
def test_a_namespace_without_interfaces_gives_the_guest_loopback(runv, make_bundle, nets, template):
    """lo is up from the agent's start (in the template's saved guest too), so no request
    was needed to bring it up."""
    bundle = make_bundle(["sh", "-c", "ping -c 1 -W 5 127.0.0.1 >/dev/null && echo LO-OK"], **netns_entry(nets.namespace()))
    result = runv("--template", template, "run", "--bundle", bundle, "lo1")
    assert (result.returncode, result.stdout) == (0, "LO-OK\n"), result.stderr


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_two_interfaces_and_delete_force_after_a_crash(runv, make_bundle, nets, root, tmp_path):
    path = nets.namespace()
    a = nets.veth(path, "eth0", 85)
    b = nets.veth(path, "eth1", 86, mtu=1400, default=False)
    script = (
        "for i in eth0 eth1; do echo $i $(cat /sys/class/net/$i/address) $(cat /sys/class/net/$i/mtu); done; "
        f"ping -c 1 -W 10 {a['host_ip']} >/dev/null && echo PING0-OK; "
        f"ping -c 1 -W 10 {b['host_ip']} >/dev/null && echo PING1-OK; "
        "echo READY; exec sleep 1000"
    )
    bundle = make_bundle(["sh", "-c", script], **netns_entry(path))
    out = tmp_path / "out"
    with open(out, "w") as stdout:
        created = runv("create", "--bundle", bundle, "--pid-file", tmp_path / "pid", "net2", stdout=stdout)
        assert created.returncode == 0, created.stderr
    assert runv("start", "net2").returncode == 0
    deadline = time.monotonic() + TUN_TIMEOUT
    while "READY" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = out.read_text()
    assert f"eth0 {a['mac']} 1500" in text and f"eth1 {b['mac']} 1400" in text, text
    assert "PING0-OK" in text and "PING1-OK" in text, text
    taps, ingress = taps_and_qdiscs(path)
    assert sorted(taps) == ["tap0_runv", "tap1_runv"] and len(ingress) == 4
    os.kill(int((tmp_path / "pid").read_text()), 9)  # the shim dies; QEMU and the wiring stay
    time.sleep(0.5)
    assert runv("delete", "--force", "net2").returncode == 0
    assert taps_and_qdiscs(path) == ([], [])
    with IPRoute(netns=path, flags=0) as ns:
        assert sorted(link.get("ifname") for link in ns.get_links()) == ["eth0", "eth1", "lo"]


@pytest.mark.vm
@pytest.mark.usefixtures("guest_image")
def test_docker_model_interfaces_configured_after_create_are_hot_plugged(runv, make_bundle, nets, root, tmp_path):
    """No network namespace in the spec: the shim has its own; the caller fills it via
    /proc/<pid>/ns/net between create and start."""
    bundle = make_bundle(["sh", "-c", "ip -o link; ping -c 2 -W 10 10.87.0.1 >/dev/null && echo PING-OK"])
    out = tmp_path / "out"
    with open(out, "w") as stdout:
        assert runv("create", "--bundle", bundle, "--pid-file", tmp_path / "pid", "net3", stdout=stdout).returncode == 0
    pid = int((tmp_path / "pid").read_text())
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    v = nets.veth(pid, "eth0", 87)
    assert runv("start", "net3").returncode == 0
    deadline = time.monotonic() + TUN_TIMEOUT
    while runv("state", "net3").stdout and json.loads(runv("state", "net3").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.5)
    text = out.read_text()
    assert "PING-OK" in text and v["mac"] in text, text
    assert runv("delete", "net3").returncode == 0
    assert subprocess.run(["ip", "-o", "link", "show", "type", "tun"], capture_output=True, text=True).stdout == ""

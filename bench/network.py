"""Network latency and TCP throughput between a TCG guest and the host, over the tap +
tc mirred wiring of the runv-net plugin.

    .venv/bin/python bench/network.py [--mib 64] [--pings 20]

Makes a namespace with a veth (host end 10.99.0.1 in the root namespace, container end
10.99.0.2), runs one container in it that pings the host, then sends N MiB of zeros to a
host TCP sink with busybox nc; the host times the transfer from accept to EOF. Host ->
guest pings use busybox ping. Prints markdown; removes the namespace and veth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pyroute2 import IPRoute, netns

from runv.testing.host import RUNV, make_rootfs

NS = "rvbench-net"
HOST, GUEST = "10.99.0.1", "10.99.0.2"


def sink(server: socket.socket, result: dict) -> None:
    conn, _ = server.accept()
    started = time.monotonic()
    total = 0
    with conn:
        while data := conn.recv(1 << 20):
            total += len(data)
    result.update(bytes=total, seconds=time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--pings", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runv-bench-net-"))
    netns.create(NS)
    try:
        with IPRoute() as ip:
            ip.link("add", ifname="rvbench-h", kind="veth", peer={"ifname": "eth0", "net_ns_fd": NS})
            index = ip.link_lookup(ifname="rvbench-h")[0]
            ip.addr("add", index=index, address=HOST, prefixlen=24)
            ip.link("set", index=index, state="up")
        with IPRoute(netns=f"/run/netns/{NS}", flags=0) as ns:
            index = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=index, address=GUEST, prefixlen=24)
            ns.link("set", index=index, state="up")
        server = socket.socket()
        server.bind((HOST, 0))
        server.listen(1)
        result: dict = {}
        threading.Thread(target=sink, args=(server, result), daemon=True).start()
        port = server.getsockname()[1]
        bundle = work / "bundle"
        make_rootfs(bundle / "rootfs")
        script = (
            f"ping -q -c {args.pings} -i 0.2 {HOST} | tail -1; "
            f"dd if=/dev/zero bs=64k count={args.mib * 16} 2>/dev/null | nc {HOST} {port}; "
            "nc -l -p 7000 -e true"  # stay up for the host's pings until it connects
        )
        config = {
            "ociVersion": "1.0.2",
            "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{NS}"}]},
        }
        (bundle / "config.json").write_text(json.dumps(config))
        out = open(work / "out", "w+")
        run = subprocess.Popen([RUNV, "--root", str(work / "state"), "run", "-b", str(bundle), "bench-net"],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while "seconds" not in result and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        ping = ["busybox", "ping", "-q", "-c", str(args.pings), "-i", "0.2", GUEST]
        host_ping = subprocess.run(ping, capture_output=True, text=True).stdout.strip().splitlines()[-1:]
        socket.create_connection((GUEST, 7000), timeout=10).close()
        run.wait(60)
        out.seek(0)
        guest_ping = out.read().strip().splitlines()[:1]
        mbit = result["bytes"] * 8 / result["seconds"] / 1e6
        print("| measure | value |\n|---|---|")
        print(f"| ping guest -> host ({args.pings}×) | {' '.join(guest_ping)} |")
        print(f"| ping host -> guest ({args.pings}×) | {' '.join(host_ping)} |")
        print(f"| TCP guest -> host, {args.mib} MiB (busybox nc) | {result['bytes'] / 2**20:.0f} MiB in {result['seconds']:.2f} s = {mbit:.0f} Mbit/s |")
    finally:
        subprocess.run([RUNV, "--root", str(work / "state"), "delete", "--force", "bench-net"], capture_output=True)
        netns.remove(NS)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

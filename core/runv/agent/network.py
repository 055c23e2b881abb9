"""Networking (op_network): lo and the NICs the host wired, found by MAC, and the /etc files it sent."""

import fcntl
import os
import socket
import struct
import time

from runv.agent.errors import RequestError

NIC_TIMEOUT = 15.0  # seconds a hot-plugged NIC may take to show up in /sys/class/net
SYS_NET = "/sys/class/net"
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # <linux/sockios.h>, <net/if.h>
IFREQ_FLAGS = struct.Struct("16sh14x")


def link_up(name: str) -> None:
    """Sets an interface up with two ioctls (no busybox process: a fork costs tens of ms under TCG)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _, flags = IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(name.encode(), 0)))
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(name.encode(), flags | IFF_UP))


def nic_macs() -> dict:
    """MAC address -> interface name, for every interface the guest kernel has."""
    found = {}
    for name in os.listdir(SYS_NET) if os.path.isdir(SYS_NET) else ():
        try:
            with open(f"{SYS_NET}/{name}/address") as f:
                found[f.read().strip().lower()] = name
        except OSError:
            continue
    return found


def wait_for_nics(macs: list, timeout: float) -> dict:
    """MAC -> current name of each NIC in ``macs``, waiting for hot-plugged ones to appear."""
    wanted = {mac.lower() for mac in macs}
    deadline = time.monotonic() + timeout
    while True:
        found = nic_macs()
        missing = wanted - set(found)
        if not missing:
            return {mac: found[mac] for mac in wanted}
        if time.monotonic() > deadline:
            raise RequestError(f"no network interface with MAC {', '.join(sorted(missing))} appeared in the guest")
        time.sleep(0.05)


def configure_nics(interfaces: list, names: dict) -> None:
    """Renames each NIC to its interface's name (through a temporary name, so two NICs
    may swap names), then sets MTU, link up, addresses and routes."""
    current = {}
    for index, iface in enumerate(interfaces):
        name = names[iface["mac"].lower()]
        if name != iface["name"]:
            busybox("ip", "link", "set", "dev", name, "name", f"runvtmp{index}")
            name = f"runvtmp{index}"
        current[iface["name"]] = name
    for iface in interfaces:
        name = iface["name"]
        if current[name] != name:
            busybox("ip", "link", "set", "dev", current[name], "name", name)
        busybox("ip", "link", "set", "dev", name, "mtu", str(int(iface["mtu"])))
        busybox("ip", "link", "set", "dev", name, "up")
        for addr in iface.get("addresses", []):
            family = "-6" if addr["family"] == 6 else "-4"
            busybox("ip", family, "addr", "add", f"{addr['address']}/{int(addr['prefixlen'])}", "dev", name)
        for route in iface.get("routes", []):
            argv = ["ip", "-6" if route["family"] == 6 else "-4", "route", "replace", route["dst"]]
            if route.get("gateway"):
                argv += ["via", route["gateway"]]
            argv += ["dev", name]
            if route.get("metric") is not None:
                argv += ["metric", str(int(route["metric"]))]
            busybox(*argv)


def write_rootfs_file(rootfs: str, path: str, content: str) -> None:
    """Writes ``content`` to ``path`` inside the rootfs, refusing to leave it through
    ``..`` or a symlinked directory; a symlink at ``path`` itself is replaced."""
    relative = os.path.normpath("/" + path).lstrip("/")
    root = os.path.realpath(rootfs)
    parent = os.path.realpath(os.path.join(root, os.path.dirname(relative)))
    if not relative or (parent != root and not parent.startswith(root.rstrip("/") + "/")):
        raise RequestError(f"cannot write {path}: it leads out of the container's rootfs")
    os.makedirs(parent, exist_ok=True)
    target = os.path.join(parent, os.path.basename(relative))
    if os.path.islink(target):
        os.unlink(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)


def busybox(*args: str) -> None:
    """Runs a busybox applet with ``args`` as its argv (never through a shell); raises
    RequestError with its output when it fails."""
    argv = ["/bin/busybox", *args]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.execv(argv[0], argv)
    os.close(w)
    output = b""
    while chunk := os.read(r, 4096):
        output += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RequestError(f"{' '.join(args)}: {output.decode(errors='replace').strip()}")


def op_network(agent, message: dict) -> None:
    """Brings up lo and the NICs the host wired (found by MAC) with the name, MTU,
    addresses and routes of the interfaces they mirror, then writes the /etc files
    the host sent (resolv.conf, hosts, hostname) into the container's rootfs."""
    link_up("lo")
    interfaces = message.get("interfaces", [])
    configure_nics(interfaces, wait_for_nics([i["mac"] for i in interfaces], NIC_TIMEOUT))
    for path, content in message.get("files", {}).items():
        write_rootfs_file(agent.rootfs, path, content)

"""A namespace's interfaces as values, and the tap + tc mirred wiring that joins each one
to a VM's NIC, all over netlink with pyroute2 (nothing is passed to a shell).

For an interface ``eth0`` the wiring is, inside the container's network namespace::

    tapN_runv   a tap opened (and so created) by runv; its fd goes to the VMM
    eth0  ingress qdisc, u32 match-all filter (prio FILTER_PRIO): mirred egress redirect -> tapN_runv
    tapN_runv ingress qdisc, the same filter:                      mirred egress redirect -> eth0

so every frame the caller's veth receives goes to the guest and every frame the guest
sends leaves through the veth, whatever its addresses (Kata's "tcfilter" model).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from pyroute2 import IPRoute, NetlinkError, protocols

from runv.api import Frozen, RunvError, to_json
from runv_net.netns import run_in

ARPHRD_ETHER = 1
INGRESS = 0xFFFF0000  # the ingress qdisc's handle, ffff:
FILTER_PRIO = 0xC0DE  # our filters' priority: how teardown tells them from the caller's
FILTER_CLASS = 0x10001  # u32 wants a class id; on an ingress qdisc it has no effect
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTN_UNICAST = 1
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}


def tap_name(number: int) -> str:
    return f"tap{number}_runv"


def is_our_tap(name: str) -> bool:
    return name.startswith("tap") and name.endswith("_runv")


def ipr(path: str) -> IPRoute:
    """An rtnetlink socket inside the namespace at ``path`` (never creating one there)."""
    try:
        return IPRoute(netns=path, flags=0)
    except OSError as exc:
        raise RunvError(f"cannot reach network namespace {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ what the namespace holds


class Address(Frozen):
    family: int  # 4 or 6
    address: str
    prefixlen: int


class Route(Frozen):
    family: int
    dst: str  # "default" or "prefix/len"
    gateway: str | None = None
    metric: int | None = None


class Interface(Frozen):
    """One interface of the container's namespace as the guest must reproduce it."""

    index: int
    name: str
    mac: str
    mtu: int
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()

    def guest_request(self) -> dict:
        """This interface as the agent's ``network`` request describes it."""
        return {
            "name": self.name,
            "mac": self.mac,
            "mtu": self.mtu,
            "addresses": to_json(self.addresses),
            "routes": to_json(self.routes),
        }


def scan(path: str, skip: set[int]) -> list[Interface]:
    """The Ethernet interfaces of the namespace (``lo``, tunnels and our taps left out,
    and the indexes in ``skip``, already wired), with addresses and main-table routes."""
    with ipr(path) as rt:
        links = [
            link
            for link in rt.get_links()
            if link["ifi_type"] == ARPHRD_ETHER
            and link["index"] not in skip
            and not is_our_tap(link.get("ifname") or "")
            and link.get("address")
        ]
        found = []
        for link in links:
            index = link["index"]
            addresses = tuple(
                Address(FAMILIES[a["family"]], a.get("address"), a["prefixlen"])
                for a in rt.get_addr(index=index)
                if a["family"] in FAMILIES and not _link_local(a["family"], a.get("address"))
            )
            routes = []
            for family in FAMILIES:
                for r in rt.get_routes(family=family, table=RT_TABLE_MAIN):
                    if r.get("oif") != index or r["proto"] == RTPROT_KERNEL or r["type"] != RTN_UNICAST:
                        continue
                    dst = f"{r.get('dst')}/{r['dst_len']}" if r["dst_len"] else "default"
                    if family == socket.AF_INET6 and dst.startswith(("fe80:", "ff00:")):
                        continue
                    routes.append(Route(FAMILIES[family], dst, r.get("gateway"), r.get("priority")))
            routes.sort(key=lambda r: r.gateway is not None)  # on-link routes before the ones via them
            found.append(
                Interface(index, link.get("ifname"), link.get("address"), link.get("mtu"), addresses, tuple(routes))
            )
    return found


def _link_local(family: int, address: str | None) -> bool:
    """fe80::/10 (the guest makes its own from the same MAC)."""
    return family == socket.AF_INET6 and address is not None and address.lower().startswith("fe8")


# ------------------------------------------------------------------ wiring


class Link(Frozen):
    """One veth <-> tap pair runv wired; persisted so teardown can undo exactly this."""

    nic: str  # the VM's device id
    veth: str
    veth_index: int
    tap: str
    qdisc_created: bool  # False when the caller's veth already had an ingress qdisc


def open_tap(name: str) -> int:
    """Opens /dev/net/tun as tap ``name`` in the calling thread's namespace (which creates
    it, non-persistent: it goes away with the last fd, so a dead VMM leaves no tap)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except BaseException:
        os.close(fd)
        raise
    return fd


def wire(path: str, iface: Interface, number: int, nic: str) -> tuple[Link, int]:
    """Creates tap ``number`` next to ``iface`` and mirrors the two into each other;
    returns the record and the tap's open fd (for the VMM). Undoes itself on failure."""
    tap = tap_name(number)
    with ipr(path) as rt:
        if rt.link_lookup(ifname=tap):
            raise RunvError(
                f"network namespace {path} already has {tap}: is another runv container using this namespace?"
            )
    try:
        fd = run_in(path, lambda: open_tap(tap))
    except OSError as exc:
        raise RunvError(f"cannot create tap {tap} in network namespace {path}: {exc.strerror or exc}") from None
    link = None
    try:
        with ipr(path) as rt:
            current = rt.link_lookup(ifname=iface.name)
            if current != [iface.index]:
                raise NetlinkError(errno.ENODEV)
            tap_index = rt.link_lookup(ifname=tap)[0]
            rt.link("set", index=tap_index, mtu=iface.mtu, state="up")
            link = Link(nic=nic, veth=iface.name, veth_index=iface.index, tap=tap, qdisc_created=_add_ingress(rt, iface.index))
            _add_redirect(rt, iface.index, tap_index)
            _add_ingress(rt, tap_index)
            _add_redirect(rt, tap_index, iface.index)
    except BaseException as exc:
        if link is not None:
            unwire(path, [link])
        os.close(fd)
        if isinstance(exc, NetlinkError) and exc.code == errno.ENODEV:
            raise RunvError(
                f"interface {iface.name} disappeared from network namespace {path} while runv was wiring it"
            ) from None
        if isinstance(exc, NetlinkError):
            raise RunvError(f"cannot wire interface {iface.name} in network namespace {path}: {exc}") from None
        raise
    return link, fd


def _add_ingress(rt: IPRoute, index: int) -> bool:
    """Adds the ingress qdisc; False when the interface already had one (the caller's)."""
    try:
        rt.tc("add", "ingress", index)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        return False
    return True


def _add_redirect(rt: IPRoute, source: int, target: int) -> None:
    rt.tc(
        "add-filter",
        "u32",
        source,
        parent=INGRESS,
        prio=FILTER_PRIO,
        protocol=protocols.ETH_P_ALL,
        target=FILTER_CLASS,
        keys=["0x0/0x0+0"],
        action=[{"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target}],
    )


def unwire(path: str, links: list[Link]) -> None:
    """Removes our filters (and the ingress qdiscs we added) from the veths and deletes the
    taps; the veths are otherwise left as the caller made them. Anything already gone is
    skipped, so it converges after any crash."""
    with ipr(path) as rt:
        for link in links:
            if rt.link_lookup(ifname=link.veth) == [link.veth_index]:
                _ignore(rt.tc, "del-filter", index=link.veth_index, parent=INGRESS, prio=FILTER_PRIO, protocol=protocols.ETH_P_ALL)
                if link.qdisc_created and not _ignore(rt.get_filters, index=link.veth_index, parent=INGRESS):
                    _ignore(rt.tc, "del", "ingress", link.veth_index)
            for index in rt.link_lookup(ifname=link.tap):
                _ignore(rt.link, "del", index=index)


def _ignore(call, *args, **kwargs):
    """Runs a netlink call whose target may already be gone; returns its result or None."""
    try:
        result = call(*args, **kwargs)
        return list(result) if result is not None else None
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return None
        raise

"""The network plugin's work, per container: wire the namespace at create, bring the guest
up to date after boot and at start, unwire at teardown. See docs/networking.md."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runv.api import Nic, RunvError, VMContribution, netns_path, to_json
from runv_net.netns import Namespace, locate, unshare_net

logger = logging.getLogger("runv.net")
if TYPE_CHECKING:
    from runv_net import wire  # imports pyroute2 (≈0.1 s): only where there is wiring to do

RECORD = "net.json"  # in the container's state directory: what teardown must undo
HOTPLUG_SLOTS = 2  # PCIe slots kept free for interfaces configured after create
GUEST_TIMEOUT = 60.0  # seconds the agent may take for `network` (it waits for hot-plugged NICs)
# /etc files for callers that do not bind-mount them: annotations holding the content.
ANNOTATIONS = {"runv.net/resolv.conf": "/etc/resolv.conf", "runv.net/hosts": "/etc/hosts"}

SESSIONS: dict[str, Session] = {}  # container id -> live session, in the shim process


class Session:
    """What runv wired in one container's namespace, and what the guest still lacks."""

    def __init__(self, container_id: str, state_dir: Path, ns: Namespace) -> None:
        self.container_id = container_id
        self.state_dir = state_dir
        self.ns = ns
        self.links: list[wire.Link] = []
        self.wired: set[int] = set()  # veth ifindexes already wired
        self.fds: dict[str, int] = {}  # nic id -> tap fd, until the VMM holds it
        self.unconfigured: list[wire.Interface] = []  # wired, not yet set up in the guest
        self.guest_ready = False

    def save(self) -> None:
        record = {"netns": self.ns.to_json(), "links": to_json(self.links)}
        tmp = self.state_dir / (RECORD + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.state_dir / RECORD)

    def wire_new(self) -> list[Nic]:
        """Wires every interface not wired yet; returns their NICs (fds open)."""
        if self.ns.private and not self.links and only_loopback():
            return []  # the shim's own namespace, still empty: no netlink needed
        from runv_net import wire

        nics = []
        for iface in wire.scan(self.ns.path, self.wired):
            number = len(self.links)
            nic_id = f"net{number}"
            link, fd = wire.wire(self.ns.path, iface, number, nic_id)
            self.links.append(link)
            self.wired.add(iface.index)
            self.fds[nic_id] = fd
            self.unconfigured.append(iface)
            self.save()
            logger.debug("net: wired %s (%s) to %s as %s", iface.name, iface.mac, link.tap, nic_id)
            nics.append(Nic(id=nic_id, fd=fd, mac=iface.mac, mtu=iface.mtu, tap=link.tap))
        return nics

    def close_fds(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def configure(container) -> VMContribution:
    """``configure_net``: finds (or makes) the namespace, wires what is in it."""
    path = netns_path(container.spec.linux)
    ns = unshare_net() if path is None else Namespace.open(path)
    session = Session(container.id, container.state_dir, ns)
    SESSIONS[container.id] = session
    session.save()  # before wiring anything: a crash from here on leaves a record to undo
    nics = session.wire_new()
    return VMContribution(nics=tuple(nics), hotplug_slots=HOTPLUG_SLOTS)


def sync(container, agent, attach: Callable[[Nic], None]) -> None:
    """``sync_net``: hot-plugs interfaces configured since the last call, then has the
    agent set up every interface it has not seen (and, the first time, lo and /etc files)."""
    session = SESSIONS.get(container.id)
    if session is None:
        return
    session.close_fds()  # the ones given at boot: the VMM holds its own copies now
    for nic in session.wire_new():
        try:
            attach(nic)
        finally:
            os.close(session.fds.pop(nic.id))
    if session.guest_ready and not session.unconfigured:
        return
    request: dict[str, object] = {"interfaces": [iface.guest_request() for iface in session.unconfigured]}
    if not session.guest_ready:
        request["files"] = etc_files(container)
    if request["interfaces"] or request.get("files"):  # lo is up from the agent's start: no round trip for nothing
        agent.call("network", timeout=GUEST_TIMEOUT, **request)
    session.unconfigured.clear()
    session.guest_ready = True


def release(container) -> None:
    """``release_net``: undoes the wiring the record names, wherever the namespace is now."""
    session = SESSIONS.pop(container.id, None)
    if session is not None:
        session.close_fds()
    record_path = Path(container.state_dir) / RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return
    ns = record.get("netns") or {}
    path = locate(ns.get("dev", -1), ns.get("ino", -1), ns.get("path"))
    if record.get("links") and path is not None:
        from runv_net import wire

        links = [wire.Link(**link) for link in record["links"]]
        try:
            wire.unwire(path, links)
        except (OSError, RunvError) as exc:
            logger.warning("net: cannot unwire network namespace %s of %s: %s", path, container.id, exc)
            return
    record_path.unlink(missing_ok=True)


def only_loopback() -> bool:
    """Whether the shim's own network namespace has no interface but ``lo`` (read from
    /proc, so an empty namespace costs no netlink session)."""
    with open(f"/proc/{os.getpid()}/net/dev") as f:
        names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    return names == ["lo"]


def etc_files(container) -> dict[str, str]:
    """The /etc files to write into the container: annotations holding the content, for
    callers that do not bind-mount them (a mount in config.json, as Docker, Podman and
    CRI make, reaches the guest with the other mounts and wins over the annotation)."""
    mounted = {m.get("destination") for m in container.spec.mounts if isinstance(m, dict)}
    return {
        destination: container.annotations[key]
        for key, destination in ANNOTATIONS.items()
        if key in container.annotations and destination not in mounted
    }

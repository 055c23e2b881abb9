"""runv plugin ``net`` (always on): the container's network namespace reaches its VM.

Each Ethernet interface of the namespace (a caller's veth) gets a tap next to it, the two
mirrored into each other with tc (ingress qdisc + u32 ``mirred redirect``), and the tap's
fd goes to the VMM as a virtio-net NIC with the veth's MAC; the guest agent then gives the
NIC the veth's name, MTU, addresses and routes. Everything goes over netlink (pyroute2),
imported only when a container is created or deleted. See docs/networking.md.
"""

from pathlib import Path

from runv.api import hookimpl

PLUGIN_NAME = "net"


@hookimpl
def configure_net(container):
    from runv_net import plugin

    return plugin.configure(container)


@hookimpl
def sync_net(container, agent, attach):
    from runv_net import plugin

    plugin.sync(container, agent, attach)


@hookimpl
def release_net(container):
    from runv_net import plugin

    if (Path(container.state_dir) / plugin.RECORD).exists():  # else nothing wired: `delete` need not import pyroute2
        plugin.release(container)

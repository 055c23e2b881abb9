"""Example runv hypervisor plugin ``cloudhv``: each container's VM is a Cloud Hypervisor.

A third-party hypervisor plugin in full, written against :mod:`runv.api` only. It
implements the three hooks a hypervisor implements:

- ``hypervisor_info``: what it can do (:data:`CAPABILITIES`), its VM class
  (:class:`~runv_cloudhv.vm.CloudHvVM`), its priority for ``--hypervisor auto``, no templates;
- ``probe``: can it run here? (``cloud-hypervisor`` and ``virtiofsd`` found, hardware KVM);
- ``boot``: start the VM (:func:`runv_cloudhv.vm.start`) and return its :class:`~runv.api.VM`.

How the guest meets runv's contract:

- **Agent**: over virtio-vsock. The kernel gets ``runv.agent=vsock:1024`` (the core adds
  it from :data:`CAPABILITIES`), so the agent listens on vsock port 1024. On the host
  ``--vsock cid=3,socket=agent.sock`` is Cloud Hypervisor's *hybrid vsock*: the core
  connects to ``vm.agent_socket``, writes ``CONNECT 1024`` and reads ``OK <port>``, after
  which the socket carries the agent protocol as any other channel would.
- **Shares**: virtio-fs, one ``virtiofsd`` per share (``--fs tag=T,socket=S``); the guest
  mounts ``-t virtiofs TAG``. virtio-fs needs guest memory shared with the daemons, so
  a VM with shares gets ``--memory size=NM,shared=on``.
- **Disks**: raw images (``--disk path=P,serial=S``), which the guest finds by their
  virtio-blk serial (``serial=`` needs v35 or later). qcow2 is not declared: runv's
  per-container overlays are qcow2 files with a backing file, which Cloud Hypervisor
  v51 and later open only with ``backing_files=on``, an option older releases reject;
  so the core refuses such a VM before boot, in one line (use raw images, or QEMU).
- **NICs**: the network plugin's tap fds, inherited (``--net fd=N,mac=M``); no hot-plug
  (``vm.add-net`` would need the fd passed over the API socket with SCM_RIGHTS).
- **Pause/resume/stop**: the REST API on ``--api-socket`` (``vm.pause``, ``vm.resume``,
  ``vmm.shutdown``); stopping the VM also stops its virtiofsd processes.
- **Templates**: none (``templates=None``). Cloud Hypervisor has ``vm.snapshot`` and
  ``--restore``, but a restored VM keeps the snapshot's device configuration (virtiofsd
  sockets, vsock socket, tap fds, disk paths), so per-container clones need more than
  this example shows.

The guest image carries its guest drivers, ``virtiofs`` and the vsock transport
(``vmw_vsock_virtio_transport``) among them, once ``runv guest build`` has run with this
plugin installed (``guest_modules``); Cloud Hypervisor boots the ELF ``vmlinux`` through
its PVH entry (what ``runv guest build`` installs). It needs hardware KVM (or MSHV).

Configure the binaries with ``RUNV_CLOUDHV`` / ``RUNV_VIRTIOFSD`` or in runv's config file::

    [cloudhv]
    path = "/opt/cloud-hypervisor/cloud-hypervisor"
    virtiofsd = "/usr/libexec/virtiofsd"
"""

from runv.api import VIRTIOFS, AgentChannel, Capabilities, GuestModules, HypervisorInfo, hookimpl, kvm_verdict
from runv_cloudhv import command
from runv_cloudhv.vm import CloudHvVM, start

PRIORITY = 16  # below qemu (20) and xen (18), above kvmtool (15): an example does not take `auto` from QEMU
CAPABILITIES = Capabilities(
    shared_fs=VIRTIOFS,  # --fs tag=TAG,socket=S per share; the guest mounts -t virtiofs TAG
    agent=AgentChannel.vsock(command.AGENT_PORT, connect_preamble=f"CONNECT {command.AGENT_PORT}"),
    disk_prefix="",  # --disk ...,serial=S: the guest finds each disk by its serial
    disk_formats=("raw",),
    nics=True,  # --net fd=N,mac=M on the inherited taps
    nic_hotplug=False,
    pause=True,  # PUT /api/v1/vm.pause, vm.resume
)


@hookimpl
def hypervisor_info():
    return HypervisorInfo(capabilities=CAPABILITIES, vm=CloudHvVM, priority=PRIORITY,
                          programs=(command.BINARY, command.VIRTIOFSD))


@hookimpl
def guest_modules():
    """The guest drivers of Cloud Hypervisor's devices: virtio-pci disks and NICs, the vsock
    transport of the agent's channel, and virtio-fs for the shares."""
    return GuestModules(at_boot=("virtio_pci", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport"),
                        on_demand=("virtiofs",))


@hookimpl
def probe():
    return command.missing() or kvm_verdict()["reason"]


@hookimpl
def boot(vm):
    return start(vm)

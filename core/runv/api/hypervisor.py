"""The hypervisor interface: what a hypervisor plugin declares (its capabilities), and the
running VM its ``boot`` hook returns, whose methods the core calls for the VM's life.

A hypervisor plugin implements three hooks (see :mod:`runv.hookspecs`): ``hypervisor_info``
(a :class:`HypervisorInfo`: priority, capabilities, its :class:`VM` class, its template
support), ``probe`` (can it run here?) and ``boot`` (start a :class:`~runv.api.vm.VMSpec`,
return a :class:`VM`). Everything else is a method of its :class:`VM` subclass: the core
persists :meth:`VM.record` in the container's state and later CLI calls re-attach with
:meth:`VM.from_record`, so ``runv pause`` in another process drives the same VM.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runv.api.errors import Unsupported
from runv.api.frozen import Frozen
from runv.api.process import is_running, stop_process

if TYPE_CHECKING:
    from runv.api.vm import Nic, VMSpec

AGENT_PORT_NAME = "org.runv.agent"  # the virtio-serial port the guest agent looks for


class SharedFs(Frozen):
    """How the guest mounts a :class:`~runv.api.vm.Share` this hypervisor serves:
    ``mount -t FSTYPE -o OPTIONS SOURCE``, where SOURCE is the share's ``tag`` (a VMM
    device's mount tag) or its host ``path`` (a "VMM" that shares the host's kernel, such
    as the fake one in :mod:`runv.testing.fakevmm`)."""

    fstype: str  # "9p", "virtiofs", "bind"
    options: str = ""
    source: str = "tag"  # "tag" or "path"


NINEP_VIRTIO = SharedFs("9p", "trans=virtio,version=9p2000.L,msize=262144")
VIRTIOFS = SharedFs("virtiofs")


class ChannelKind(StrEnum):
    """How the guest agent reaches its host."""

    VIRTIO_SERIAL = "virtio-serial"  # a virtio-serial port named org.runv.agent (the default)
    TTY = "tty"  # a serial device of the guest's, such as /dev/ttyS1 or /dev/hvc1
    VSOCK = "vsock"  # a vsock port the agent listens on
    UNIX = "unix"  # a unix socket the agent itself listens on (a "VMM" sharing the host's kernel)


class AgentChannel(Frozen):
    """Where the guest agent finds its host (:meth:`tty`, :meth:`vsock`, :meth:`unix`, or
    the default virtio-serial port). On the host the VMM (or a relay the plugin starts)
    always serves the channel as a unix stream socket at ``VMSpec.agent_socket``; with
    ``connect_preamble`` the core first writes that line to it (the hybrid vsock of
    Firecracker and cloud-hypervisor: ``CONNECT 1024``) and reads one reply line."""

    kind: ChannelKind = ChannelKind.VIRTIO_SERIAL
    device: str = ""  # tty: the guest's device node
    port: int = 0  # vsock: the port the agent listens on
    connect_preamble: str = ""

    @classmethod
    def tty(cls, device: str) -> AgentChannel:
        """The serial device ``device`` of the guest (``/dev/ttyS1``, ``/dev/hvc1``)."""
        return cls(ChannelKind.TTY, device=device)

    @classmethod
    def vsock(cls, port: int, connect_preamble: str = "") -> AgentChannel:
        """vsock ``port`` in the guest; ``connect_preamble`` for a hybrid vsock's socket."""
        return cls(ChannelKind.VSOCK, port=port, connect_preamble=connect_preamble)

    @classmethod
    def unix(cls) -> AgentChannel:
        """The agent listens on ``VMSpec.agent_socket`` itself."""
        return cls(ChannelKind.UNIX)

    def kernel_args(self) -> tuple[str, ...]:
        """What tells the agent which channel to use (nothing for virtio-serial)."""
        if self.kind == ChannelKind.TTY:
            return (f"runv.agent={self.device}",)
        if self.kind == ChannelKind.VSOCK:
            return (f"runv.agent=vsock:{self.port}",)
        return ()


class Capabilities(Frozen):
    """What a hypervisor can give a VM. The core checks every VM against them before
    ``boot`` and refuses, in one line, a share, disk or NIC the hypervisor cannot honour;
    it builds the guest's mounts of shares and disks from them."""

    shared_fs: SharedFs | None = NINEP_VIRTIO  # None: no shared directories (rootfs on a disk)
    agent: AgentChannel = AgentChannel()
    disk_prefix: str = ""  # "": the guest finds a disk by its virtio-blk serial; else disk i is PREFIX + "a" + i
    disk_formats: tuple[str, ...] = ("raw", "qcow2")
    nics: bool = True  # NICs (tap fds) given at boot
    nic_hotplug: bool = False  # VM.attach_nic works on a running VM
    pause: bool = False  # VM.pause and VM.resume work
    resize: bool = False  # VM.resize works: memory and vCPUs hot-plugged up to VMSpec.max_memory_mib / max_vcpus
    # VMSpec.userland is mapped into the guest read-only with DAX (virtio-pmem): its VMs boot the
    # lean initrd (runv.guest.userland), which holds no Python of its own
    userland: bool = False

    def disk_device(self, index: int) -> str:
        """The guest's device node of the ``index``-th disk, for hypervisors that name disks by order."""
        return self.disk_prefix + "abcdefghijklmnopqrstuvwxyz"[index]


class VM:
    """A running VM, as its hypervisor plugin drives it. Subclass it; every method may be
    called from another process than the one that booted the VM (after :meth:`from_record`),
    and :meth:`stop` again after a crash, so each must work from ``pid``, ``start_time`` and
    ``data`` alone. The defaults refuse with :class:`~runv.api.errors.Unsupported`."""

    def __init__(self, hypervisor: str, pid: int, start_time: int | None, data: dict[str, Any] | None = None) -> None:
        self.hypervisor = hypervisor  # the plugin's entry-point name
        self.pid = pid  # the VMM's host process (what the core watches and, at worst, kills)
        self.start_time = start_time  # its start time (runv.api.process_start_time), against PID reuse
        self.data = data or {}  # the plugin's own JSON-ready facts (control socket paths, names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(hypervisor={self.hypervisor!r}, pid={self.pid})"

    def record(self) -> dict[str, Any]:
        """What the core persists to re-attach later."""
        return {"hypervisor": self.hypervisor, "pid": self.pid, "start_time": self.start_time, "data": self.data}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> VM:
        return cls(record["hypervisor"], record["pid"], record.get("start_time"), record.get("data"))

    def alive(self) -> bool:
        return is_running(self.pid, self.start_time)

    def shared_fs(self) -> SharedFs | None:
        """How this VM serves its shares, where the hypervisor decides it per VM (the QEMU
        plugins: virtio-fs, or 9p where there is no virtiofsd or for a clone that shares its
        template's memory); None: as the hypervisor's capabilities say."""
        return None

    def stop(self, force: bool = False) -> None:
        """Stops the VM and returns once its VMM has exited; must converge when it is
        already gone. The default kills the VMM process."""
        stop_process(self.pid, self.start_time, force=True)

    def pause(self) -> None:
        """Freezes every vCPU."""
        raise Unsupported(f"hypervisor {self.hypervisor!r} cannot pause a VM")

    def resume(self) -> None:
        """Thaws a VM frozen by :meth:`pause`."""
        raise Unsupported(f"hypervisor {self.hypervisor!r} cannot resume a VM")

    def attach_nic(self, nic: Nic) -> None:
        """Hot-plugs ``nic`` (its tap fd is open in the caller) into the running VM."""
        raise Unsupported(f"hypervisor {self.hypervisor!r} cannot hot-plug network interfaces")

    def resize(self, memory_mib: int, vcpus: int) -> None:
        """Grows or shrinks the running VM to ``memory_mib`` and ``vcpus`` (never below its
        boot size nor above the maxima it booted with); raises RunvError, naming what the
        hypervisor or the guest refused, and leaves the VM as it was."""
        raise Unsupported(f"hypervisor {self.hypervisor!r} cannot resize a running VM")

    def save(self, directory: Path) -> dict[str, Any]:
        """Saves the running guest (booted by :meth:`TemplateSupport.boot`) into
        ``directory``, files readable by root only; returns what was saved (the core keeps
        it and gives it back to :meth:`TemplateSupport.restore`). The VM is stopped after."""
        raise Unsupported(f"hypervisor {self.hypervisor!r} cannot save a VM")


class TemplateSupport:
    """VM templates: a guest booted once, saved, and restored for each container. A
    hypervisor that has them implements all of this and :meth:`VM.save`; the core checks
    that it is whole when the plugin loads."""

    def shape(self, vm: VMSpec) -> dict | None:
        """What a template must have been made from to start ``vm``: the machine and
        device set with every per-container value (host paths, names) taken out, plus the
        VMM's own identity (a template of another shape, or from another VMM build, is not
        used). None when ``vm`` cannot start from a template (it has devices one cannot carry)."""
        raise NotImplementedError

    def boot(self, vm: VMSpec, directory: Path, private: bool) -> VM:
        """Boots ``vm`` so that its :meth:`VM.save` can save it into ``directory``.
        ``private``: each clone restores into memory of its own, sharing no page with
        another (none between tenants: docs/security.md); else clones map the template's
        pages copy-on-write (density)."""
        raise NotImplementedError

    def restore(self, vm: VMSpec, directory: Path, saved: dict[str, Any]) -> VM:
        """Starts ``vm`` from the template in ``directory`` and returns once the guest runs.
        ``vm`` has the template's shape with this container's own host paths. Raise
        RunvError when the template cannot be loaded (the core warns and boots cold)."""
        raise NotImplementedError


class HypervisorInfo(Frozen):
    """What a hypervisor plugin is, returned by its ``hypervisor_info`` hook.

    ``programs`` names the host processes its VMs run, each by its ``comm`` (the program's
    file name, of which the kernel keeps 15 characters: ``qemu-system-x86_64``) or, for a
    Python helper started with ``python -m``, by its module (``runv_kvmtool.relay``); they
    run in the container's state directory. Tests find the VMs a test left behind by them
    (:func:`runv.testing.vm_processes_in`); the core itself needs none."""

    capabilities: Capabilities
    vm: type[VM] = VM  # the class the plugin's VMs are, for re-attaching from a record
    priority: int = 0  # `--hypervisor auto` takes the usable plugin with the highest
    templates: TemplateSupport | None = None
    programs: tuple[str, ...] = ()  # the host processes its VMs run: comm names, or modules run with python -m

    def problems(self) -> list[str]:
        """Why this declaration is not whole (empty when it is): templates without every
        piece, a NIC hot-plug or pause declared but not implemented."""
        found = []
        if not (isinstance(self.vm, type) and issubclass(self.vm, VM)):
            found.append(f"vm must be a subclass of runv.api.VM, not {self.vm!r}")
            return found
        if self.templates is not None:
            if not isinstance(self.templates, TemplateSupport):
                found.append("templates must be a runv.api.TemplateSupport")
            else:
                missing = [name for name in ("shape", "boot", "restore")
                           if getattr(type(self.templates), name) is getattr(TemplateSupport, name)]
                if self.vm.save is VM.save:
                    missing.append(f"{self.vm.__name__}.save")
                if missing:
                    found.append(f"templates are declared but {', '.join(missing)} not implemented")
        declared = {"nic_hotplug": ("attach_nic",), "pause": ("pause", "resume")}
        for capability, methods in declared.items():
            if getattr(self.capabilities, capability):
                for method in methods:
                    if getattr(self.vm, method) is getattr(VM, method):
                        found.append(f"capabilities.{capability} is declared but {self.vm.__name__}.{method} is not implemented")
        return found

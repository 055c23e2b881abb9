"""Helpers for testing runv plugins (and runv itself); import them in a plugin's tests.

- :func:`vm_spec` — a :class:`runv.api.VMSpec` in a temporary directory, for golden
  tests of a hypervisor plugin's command line or config.
- :func:`container` — a :class:`runv.api.Container` (bundle, parsed spec, state
  directory) for hook tests.
- :func:`hooks_with` — :class:`runv.hooks.Hooks` with your plugin registered (no install
  needed), to call ``attach_storage``/``probe``/... exactly as the core does.
- :func:`registered` — your plugin installed for this process while a ``with`` block
  runs (:func:`runv.loader.register_local`), so the core's own selection finds it:
  ``with registered("hypervisor", "fake", fakevmm): verbs.create(...)``;
  :func:`load_hypervisor` — your hypervisor plugin loaded as ``runv plugins``, ``check`` and
  ``create`` load it (its declaration checked whole).
- What the core does with a hypervisor's VMs, to test a plugin against it:
  :func:`check_vm` (what it refuses before boot), :func:`guest_mount` (how the guest mounts
  a share or disk), :func:`attach_nic` (a hot-plug), :func:`kernel_args` (every VM's).
- :func:`kvm_verdict_cache` — the KVM probe's verdict, written where runv reads it first:
  tests of what runv does when KVM is (not) usable, on any host.
- :func:`fake_distribution` — an installed-looking distribution (``dist-info`` with entry
  points) in a directory you put on ``PYTHONPATH``, for ``runv`` subprocesses, discovery
  and broken plugins; :func:`fake_vmm_path` is one that installs the fake VMM.
- :mod:`runv.testing.fakevmm` — a hypervisor plugin that runs the real guest agent as a
  host process instead of a VM: whole containers in seconds, without QEMU.
- :func:`vm_processes_in` — VM processes (what the installed hypervisor plugins declare
  their VMs run, :func:`vm_programs`, and the fake VMM's agents) whose state directory is
  under a directory, to check that a test left no VM behind; :func:`leftovers_in` — those,
  any other process and any mount there.
- :mod:`runv.testing.faults` — the moments of a ``runv create`` as seen from outside,
  to kill or race it at each (and :func:`~runv.testing.faults.unrecorded_vms`).
- :mod:`runv.testing.host` — what tests need of the host: the ``runv`` command, the
  guest files, busybox root filesystems, output through files, fake programs and cgroup trees.

Nothing here imports pytest; the helpers work from any test runner.
"""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from runv.vm.bringup import attach_nic as attach_nic
from runv.vm.bringup import check_vm as check_vm
from runv.vm.bringup import guest_mount as guest_mount
from runv.vm.bringup import kernel_args as kernel_args

if TYPE_CHECKING:
    from runv.api import Container, VMSpec
    from runv.hooks import Hooks
    from runv.loader import Hypervisor

FAKE_VMM_DISTRIBUTION = "runv-fakevmm"
COMM_MAX = 15  # characters of a program's name the kernel keeps as its comm


def vm_spec(state_dir: Path, **fields) -> VMSpec:
    """A VM spec with the usual file names under ``state_dir``; ``fields`` override any."""
    from runv.api import VMSpec

    values = dict(name="test", state_dir=state_dir, kernel=Path("/var/lib/runv/kernel"),
                  initrd=Path("/var/lib/runv/initrd.img"), agent_socket=state_dir / "agent.sock",
                  console_log=state_dir / "console.log")
    values.update(fields)
    return VMSpec(**values)


def container(directory: Path, args=("true",), *, readonly: bool = False, cid: str = "test",
              annotations: dict[str, str] | None = None) -> Container:
    """A container for hook tests: a bundle under ``directory`` with an empty ``rootfs``
    (create files in it as your test needs) and a state directory that does not exist yet."""
    from runv.api import Container
    from runv.oci.config import parse_spec

    rootfs = directory / "bundle" / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    spec = parse_spec({"ociVersion": "1.0.2", "process": {"args": list(args), "cwd": "/"},
                       "root": {"path": "rootfs", "readonly": readonly}, "annotations": annotations or {}},
                      "test config.json")
    return Container(id=cid, bundle=rootfs.parent, rootfs=rootfs, spec=spec, state_dir=directory / "state")


def hooks_with(*plugins: Any) -> Hooks:
    """:class:`runv.hooks.Hooks` (with the core's defaults) and ``plugins`` (modules or
    objects) registered; raises pluggy's ``PluginValidationError`` for a misspelt hook."""
    from runv.hooks import Hooks

    return Hooks(*((getattr(p, "__name__", repr(p)), p) for p in plugins))


@contextmanager
def registered(kind: str, name: str, plugin: Any) -> Iterator[Any]:
    """``plugin`` installed as the ``kind`` plugin ``name`` (``hypervisor``, ``storage`` or
    ``extra``) for this process while the block runs, as if its distribution declared it;
    ``runv plugins``, ``--hypervisor NAME`` and the shims this process forks all see it."""
    from runv import loader

    loader.register_local(kind, name, plugin)
    try:
        yield plugin
    finally:
        loader.unregister_local(kind, name)


def load_hypervisor(name: str, plugin: Any) -> Hypervisor:
    """``plugin`` loaded as the core loads the hypervisor plugin ``name``: its hooks, and its
    declaration checked whole (:class:`runv.loader.LoadError` when it is not)."""
    from runv import loader

    with registered("hypervisor", name, plugin):
        return loader.load_hypervisor(name)


def fake_distribution(directory: Path, name: str, entry_points: dict[str, dict[str, str]],
                      modules: dict[str, str] | None = None, version: str = "0.0.1") -> Path:
    """Writes ``modules`` (file name -> source) and a ``NAME-VERSION.dist-info`` declaring
    ``entry_points`` (group -> {name: "module[:attr]"}) into ``directory``; returns
    ``directory``, for ``PYTHONPATH``."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename, source in (modules or {}).items():
        (directory / filename).parent.mkdir(parents=True, exist_ok=True)
        (directory / filename).write_text(source)
    info = directory / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return directory


def fake_vmm_path(directory: Path, name: str = "fake") -> Path:
    """A directory for ``PYTHONPATH`` that installs :mod:`runv.testing.fakevmm` as the
    hypervisor ``name``, so ``runv --hypervisor NAME ...`` subprocesses run without QEMU."""
    return fake_distribution(directory, FAKE_VMM_DISTRIBUTION, {"runv.hypervisors": {name: "runv.testing.fakevmm"}})


def with_path(env: dict[str, str] | None, directory: Path) -> dict[str, str]:
    """``env`` (default: this process's environment) with ``directory`` first on ``PYTHONPATH``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH", "")]))
    return env


KVM_SOFTWARE_ONLY = "KVM is software-only here (a verdict written by runv.testing): use --hypervisor tcg"


def kvm_verdict_cache(path: Path, reason: str | None = KVM_SOFTWARE_ONLY) -> Path:
    """Writes a KVM verdict cache at ``path`` that runv takes, on this host as it is now,
    instead of probing (:func:`runv.api.kvm_verdict`; point ``RUNV_KVM_CACHE`` at it): KVM
    usable when ``reason`` is None, else unusable for ``reason``, by default a software-only
    KVM's. Tests of what runv makes of the verdict run so on any host."""
    from runv.api import kvm

    verdict = {"usable": reason is None, "reason": reason, "vendor": kvm.vendor(), "device": kvm.DEVICE}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": kvm.cache_key(), "verdict": verdict}))
    return path


@functools.cache
def vm_programs() -> frozenset[str]:
    """What VMs run on the host (:attr:`runv.api.HypervisorInfo.programs`): those of every
    installed hypervisor plugin, disabled ones too (a VM outlives its plugin's disabling), and
    the fake VMM's; read once per process, leaving out a plugin that cannot load."""
    from runv import loader
    from runv.testing import fakevmm

    programs = set(fakevmm.hypervisor_info().programs)
    for plugin in loader.installed():
        if plugin.kind == "hypervisor":
            try:
                info = loader.hooks_of(plugin).hypervisor_info()
            except loader.LoadError:
                continue
            programs.update(info.programs if info is not None else ())
    return frozenset(programs)


def vm_processes_in(directory: Path) -> list[int]:
    """PIDs of VM processes whose working directory (a container's state directory) is
    under ``directory``: processes running one of :func:`vm_programs`, by their ``comm`` or,
    for a Python helper, the module they run with ``-m``."""
    programs = vm_programs()
    names = {program[:COMM_MAX] for program in programs}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if not os.readlink(f"/proc/{entry}/cwd").startswith(str(directory)):
                continue
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().rstrip("\n")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        modules = {argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "-m"}
        if comm in names or modules & programs:
            found.append(int(entry))
    return found


def mounts_under(directory: Path | str, pids: list[int] | None = None) -> list[str]:
    """The mount points under ``directory`` in the mount namespaces of ``pids`` (default:
    every process's, each namespace read once)."""
    seen, found = set(), []
    for pid in [str(p) for p in pids] if pids is not None else ["self", *(e for e in os.listdir("/proc") if e.isdigit())]:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
            if namespace in seen:
                continue
            with open(f"/proc/{pid}/mountinfo") as f:
                points = [line.split()[4] for line in f]
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        seen.add(namespace)
        found += [point for point in points if point == str(directory) or point.startswith(f"{directory}/")]
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it now (parents first), read from ``/proc``."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # not a process, or gone meanwhile
    tree = [pid]
    for parent in tree:
        tree += [child for child, of in parents.items() if of == parent]
    return tree


def leftovers_in(directory: Path) -> list[str]:
    """What a test left under ``directory``, one line each: mounts (in any process's mount
    namespace: a shim has its own), processes whose cwd or root is there (the fake VMs'
    agents and their containers' processes), and VM processes (:func:`vm_processes_in`).
    Empty when clean."""
    found = [f"mount {point}" for point in mounts_under(directory)]
    prefix = str(directory)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for link in ("cwd", "root"):
            try:
                target = os.readlink(f"/proc/{entry}/{link}")
            except OSError:
                continue
            if target.startswith(prefix):
                found.append(f"process {entry} ({link} {target})")
                break
    found += [f"VM process {pid}" for pid in vm_processes_in(directory)]
    return found

"""Helpers for testing runv plugins (and runv itself); import them in a plugin's tests.

- :func:`vm_spec` — a :class:`~runv.api.vm.VMSpec` in a temporary directory, for
  golden tests of a hypervisor plugin's command line or config.
- :func:`container` — a container (bundle, parsed spec, state directory) for hook tests.
- :func:`hooks_with` — the core's hooks with your plugin registered in-process (no
  install needed), to call ``attach_storage``/``probe``/... exactly as the core does.
- :func:`fake_distribution` — an installed-looking distribution (``dist-info`` with entry
  points) in a directory you put on ``PYTHONPATH``, to test discovery and broken plugins.
- :func:`run_runv` — the ``runv`` command next to the running interpreter, as a subprocess.
- :func:`vm_processes_in` — QEMU processes whose state directory is under a directory,
  to check that a test left no VM behind.

Nothing here imports pytest; the helpers work from any test runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runv.api.vm import VMSpec


def vm_spec(state_dir: Path, **fields) -> VMSpec:
    """A VM spec with the usual file names under ``state_dir``; ``fields`` override any."""
    values = dict(name="test", state_dir=state_dir, kernel=Path("/var/lib/runv/kernel"),
                  initrd=Path("/var/lib/runv/initrd.img"), agent_socket=state_dir / "agent.sock",
                  console_log=state_dir / "console.log")
    values.update(fields)
    return VMSpec(**values)


def container(directory: Path, args=("true",), *, readonly: bool = False, cid: str = "test"):
    """A :class:`~runv.api.container.Container` for hook tests: a bundle under
    ``directory`` with an empty ``rootfs`` (create files in it as your test needs)."""
    from runv.oci.config import parse_spec
    from runv.api.container import Container

    rootfs = directory / "bundle" / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    spec = parse_spec({"ociVersion": "1.0.2", "process": {"args": list(args), "cwd": "/"},
                       "root": {"path": "rootfs", "readonly": readonly}}, "test config.json")
    return Container(id=cid, bundle=rootfs.parent, rootfs=rootfs, spec=spec, state_dir=directory / "state")


def hooks_with(*plugins):
    """:class:`runv.loader.Hooks` with ``plugins`` (modules or objects) registered."""
    from runv.loader import Hooks

    return Hooks(*((getattr(p, "__name__", repr(p)), p) for p in plugins))


def fake_distribution(directory: Path, name: str, entry_points: dict[str, dict[str, str]],
                      modules: dict[str, str] = {}, version: str = "0.0.1") -> Path:
    """Writes ``modules`` (file name -> source) and a ``NAME-VERSION.dist-info`` declaring
    ``entry_points`` (group -> {name: "module"}) into ``directory``; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for filename, source in modules.items():
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


def run_runv(*args, env=None, timeout=180, python: str | None = None) -> subprocess.CompletedProcess:
    """Runs ``runv ARGS`` from the interpreter's environment (or ``python``'s); text output."""
    exe = Path(python or sys.executable)
    return subprocess.run([str(exe.with_name("runv")), *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=timeout)


def vm_processes_in(directory: Path) -> list[int]:
    """PIDs of QEMU processes running in a state directory under ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/cwd").startswith(str(directory)):
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith("qemu-system"):
                        found.append(int(entry))
        except OSError:
            continue
    return found

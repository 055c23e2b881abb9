"""The parts of an OCI ``config.json`` runv honours, validated once with errors naming the field.

``linux`` and ``mounts`` are kept as given (the network namespace path is read from
``linux`` by networking). The confinement fields (capabilities, rlimits, masked and
read-only paths, sysctl, devices, resources...) are checked by runv.oci.security and
sent to the guest agent, which applies them as runc does on a host (docs/confinement.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runv.api.errors import RunvError
from runv.api.spec import HOOK_KINDS, ConsoleSize, Hook, Process, Root, Spec, User
from runv.oci.fields import read_json
from runv.oci.security import parse_capabilities, parse_linux, parse_process_security


class _Fields:
    """Typed access to one JSON object, raising errors that name ``where.field``."""

    def __init__(self, source: str, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise RunvError(f"{source}: {where or 'the document'} must be an object")
        self.source, self.where, self.data = source, where, data

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, what: str):
        raise RunvError(f"{self.source}: {self.name(key)} {what}")

    def get(self, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(key, "is required")
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            self.fail(key, f"must be {_KIND_NAMES[kind]}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list, [])
        if not all(isinstance(v, str) for v in values):
            self.fail(key, "must be a list of strings")
        return tuple(values)

    def child(self, key: str, required: bool = False) -> _Fields | None:
        value = self.get(key, dict, None, required)
        return None if value is None else _Fields(self.source, self.name(key), value)


_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}


def parse_process(data: Any, source: str, where: str = "process") -> Process:
    """A process object (from config.json or ``exec --process``)."""
    f = _Fields(source, where, data)
    args = f.strings("args")
    if not args:
        f.fail("args", "must list the program to run (a non-empty list of strings)")
    user = User()
    if (u := f.child("user")) is not None:
        gids = u.get("additionalGids", list, [])
        if not all(isinstance(g, int) and not isinstance(g, bool) for g in gids):
            u.fail("additionalGids", "must be a list of integers")
        user = User(uid=u.get("uid", int, 0), gid=u.get("gid", int, 0), additional_gids=tuple(gids))
    console = None
    if (c := f.child("consoleSize")) is not None:
        console = ConsoleSize(height=c.get("height", int, 0), width=c.get("width", int, 0))
    cwd = f.get("cwd", str, "/")
    if not cwd.startswith("/"):
        f.fail("cwd", f"must be an absolute path, not {cwd!r}")
    return Process(
        args=args,
        env=f.strings("env"),
        cwd=cwd,
        terminal=f.get("terminal", bool, False),
        user=user,
        console_size=console,
        security=parse_process_security(data, source, where),
    )


def process_to_exec(base: Process | None, request: dict) -> Process:
    """The process an exec request asks for (runv.verbs.exec.exec_request, which
    checked the options' spelling): a ``--process`` object as given, or ARGS with the
    container's own process (``base``) for the rest: its environment (``--env`` overriding
    by name), working directory, user and security; ``--cap`` adds a capability as runc's
    does (bounding, effective, permitted; ambient when the spec has inheritable ones),
    ``--no-new-privs`` sets noNewPrivileges."""
    if "process" in request:
        return parse_process(request["process"], str(request.get("source", "exec request")))
    command = request.get("command")
    if not isinstance(command, dict) or not command.get("args"):
        raise RunvError("exec needs a command (ARGS...) or --process FILE")
    if base is None:
        raise RunvError("the container's config.json cannot be read: exec with --process FILE")
    merged = {item.split("=", 1)[0]: item for item in (*base.env, *command.get("env", ()))}
    identity = User(**command["user"]) if command.get("user") else base.user
    if gids := command.get("additionalGids"):
        identity = identity.evolve(additional_gids=tuple(gids))
    cwd = command.get("cwd")
    security = dict(base.security)
    if caps := command.get("caps"):
        parse_capabilities({"bounding": list(caps)}, "exec", "--cap")
        sets = {key: list(value) for key, value in (security.get("capabilities") or {}).items()}
        for key in ("bounding", "effective", "permitted") + (("ambient",) if sets.get("inheritable") else ()):
            sets[key] = sets.get(key, []) + [c.upper() for c in caps if c.upper() not in sets.get(key, [])]
        security["capabilities"] = sets
    if command.get("noNewPrivileges"):
        security["noNewPrivileges"] = True
    return Process(args=tuple(command["args"]), env=tuple(merged.values()), cwd=cwd or base.cwd,
                   terminal=bool(command.get("tty")), user=identity, security=security)


def parse_spec(data: Any, source: str) -> Spec:
    """A whole config.json document."""
    f = _Fields(source, "", data)
    root = f.child("root", required=True)
    hooks: dict[str, tuple[Hook, ...]] = {}
    if (h := f.child("hooks")) is not None:
        for kind in HOOK_KINDS:
            entries = h.get(kind, list, [])
            parsed = []
            for index, entry in enumerate(entries):
                e = _Fields(source, f"hooks.{kind}[{index}]", entry)
                timeout = e.get("timeout", int, None)
                if timeout is not None and timeout <= 0:
                    e.fail("timeout", "must be greater than zero")
                parsed.append(Hook(path=e.get("path", str, required=True), args=e.strings("args"), env=e.strings("env"), timeout=timeout))
            hooks[kind] = tuple(parsed)
    annotations = f.get("annotations", dict, {})
    if not all(isinstance(v, str) for v in annotations.values()):
        f.fail("annotations", "must map strings to strings")
    return Spec(
        oci_version=f.get("ociVersion", str, required=True),
        process=parse_process(f.get("process", dict, required=True), source),
        root=Root(path=root.get("path", str, required=True), readonly=root.get("readonly", bool, False)),
        hostname=f.get("hostname", str, ""),
        annotations=annotations,
        hooks=hooks,
        linux=f.get("linux", dict, {}),
        mounts=tuple(f.get("mounts", list, [])),
        # the spec's mounts travel as they are (runv.vm.volumes checks them before a VM boots):
        # the container's process mounts them in spec order (runv.agent.rootfs)
        confinement={**parse_linux(f.get("linux", dict, {}), source),
                     "mounts": [dict(m) for m in f.get("mounts", list, []) if isinstance(m, dict)]},
    )


def load_bundle(bundle: Path) -> tuple[Spec, Path]:
    """The spec of ``bundle`` and its rootfs directory, checked to exist."""
    if not bundle.is_dir():
        raise RunvError(f"bundle {bundle} does not exist or is not a directory")
    config = bundle / "config.json"
    spec = parse_spec(read_json(config, "bundle config"), str(config))
    rootfs = (bundle / spec.root.path).resolve()
    if not rootfs.is_dir():
        raise RunvError(f"{config}: root.path {spec.root.path!r} ({rootfs}) is not a directory")
    return spec, rootfs

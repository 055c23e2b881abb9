"""The parts of an OCI ``config.json`` runv honours, as the hooks see them
(:attr:`runv.api.Container.spec`, the ``exec`` hook's ``process``). The core parses and
checks them once, with errors naming the field (:mod:`runv.oci.config`); ``linux`` and
``mounts`` are kept as given."""

from __future__ import annotations

from typing import Any

from runv.api.frozen import Frozen, field

HOOK_KINDS = ("createRuntime", "createContainer", "startContainer", "prestart", "poststart", "poststop")


class User(Frozen):
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


class ConsoleSize(Frozen):
    height: int
    width: int


class Process(Frozen):
    """What to run in the container (also the shape of ``runv exec --process``)."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    terminal: bool = False
    user: User = User()
    console_size: ConsoleSize | None = None
    # capabilities, rlimits, noNewPrivileges, oomScoreAdj, umask: as the core parses them (runv.oci.security)
    security: dict = field(factory=dict, eq=False)

    def to_json(self) -> dict:
        """The OCI form again (``parse_process`` reads it back)."""
        data = {
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "terminal": self.terminal,
            "user": {"uid": self.user.uid, "gid": self.user.gid, "additionalGids": list(self.user.additional_gids)},
        }
        if self.console_size:
            data["consoleSize"] = {"height": self.console_size.height, "width": self.console_size.width}
        security = dict(self.security)
        if "umask" in security:
            data["user"]["umask"] = security.pop("umask")
        data.update(security)
        return data

    def agent_request(self) -> dict:
        """The fields of the agent's ``exec`` request that describe this process."""
        oci = self.to_json()
        request = {key: oci[key] for key in ("args", "env", "cwd", "user")}
        request.update(self.security)
        request["tty"] = self.terminal
        if self.console_size:
            request["rows"], request["cols"] = self.console_size.height, self.console_size.width
        return request


class Root(Frozen):
    path: str
    readonly: bool = False


class Hook(Frozen):
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


class Spec(Frozen):
    oci_version: str
    process: Process
    root: Root
    hostname: str = ""
    annotations: dict[str, str] = field(factory=dict)
    hooks: dict[str, tuple[Hook, ...]] = field(factory=dict)
    linux: dict[str, Any] = field(factory=dict)
    mounts: tuple[dict, ...] = ()
    # what the agent's prepare applies from ``linux`` and the mounts (runv.oci.security.parse_linux)
    confinement: dict = field(factory=dict, eq=False)

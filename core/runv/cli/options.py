"""Options several commands share, declared once (runc spells them the same everywhere)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

ContainerId = Annotated[str, typer.Argument(metavar="ID", help="Container id.")]
Bundle = Annotated[Path, typer.Option("--bundle", "-b", help="Bundle directory (holds config.json).")]
PidFile = Annotated[Optional[Path], typer.Option("--pid-file", help="Write the PID of the process's host end (its shim or relay) here.")]
ConsoleSocket = Annotated[Optional[Path], typer.Option("--console-socket", help="Unix socket that receives the pty master.")]
# Accepted for runc compatibility; they have no meaning for a VM.
NoPivot = Annotated[bool, typer.Option("--no-pivot", hidden=True)]
NoNewKeyring = Annotated[bool, typer.Option("--no-new-keyring", hidden=True)]
PreserveFds = Annotated[int, typer.Option("--preserve-fds", hidden=True)]


def container_command(run):
    """The typer command of a hot command whose one argument is the container id
    (``state``, ``start``, ``pause``, ``resume``): it calls the module's ``run``."""

    def command(ctx: typer.Context, container_id: ContainerId) -> None:
        run(ctx.obj, container_id)

    return command

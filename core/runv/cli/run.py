"""Create and start a container; in the foreground, exit with its exit code."""

from pathlib import Path
from typing import Annotated

import typer

from runv.cli.options import Bundle, ConsoleSocket, ContainerId, NoNewKeyring, NoPivot, PidFile, PreserveFds

NAME = "run"


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    bundle: Bundle = Path("."),
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the container is started.")] = False,
    pid_file: PidFile = None,
    console_socket: ConsoleSocket = None,
    no_pivot: NoPivot = False,
    no_new_keyring: NoNewKeyring = False,
    preserve_fds: PreserveFds = 0,
) -> None:
    from runv.runtime.verbs import run

    code = run(ctx.obj, container_id, bundle, pid_file, detach, console_socket)
    raise typer.Exit(code)

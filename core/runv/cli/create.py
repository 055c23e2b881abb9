"""Create a container: boot its VM and hold the process ready for `runv start`."""

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "create"


def command(
    ctx: typer.Context,
    container_id: Annotated[str, typer.Argument(metavar="ID", help="Container id.")],
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle directory (holds config.json).")] = Path("."),
    pid_file: Annotated[Optional[Path], typer.Option("--pid-file", help="Write the container's PID (its shim) here.")] = None,
    console_socket: Annotated[Optional[Path], typer.Option("--console-socket", help="Unix socket that receives the pty master.")] = None,
    no_pivot: Annotated[bool, typer.Option("--no-pivot", hidden=True)] = False,
    no_new_keyring: Annotated[bool, typer.Option("--no-new-keyring", hidden=True)] = False,
    preserve_fds: Annotated[int, typer.Option("--preserve-fds", hidden=True)] = 0,
) -> None:
    from runv.sandbox.lifecycle import create

    create(ctx.obj, container_id, bundle, pid_file, console_socket)

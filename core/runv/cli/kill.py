"""Send a signal (default TERM) to the container's process."""

from typing import Annotated

import typer

from runv.cli.options import ContainerId

NAME = "kill"


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    signal: Annotated[str, typer.Argument(metavar="[SIGNAL]", help="Number, TERM or SIGTERM.")] = "TERM",
    all_processes: Annotated[bool, typer.Option("--all", "-a", help="Signal every process of the container.")] = False,
) -> None:
    from runv.runtime.verbs import kill, parse_signal

    kill(ctx.obj, container_id, parse_signal(signal), all_processes)

"""Start the process of a created container."""

from typing import Annotated

import typer

NAME = "start"


def command(ctx: typer.Context, container_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    from runv.sandbox.lifecycle import start

    start(ctx.obj, container_id)

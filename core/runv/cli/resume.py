"""Resume a paused container."""

from typing import Annotated

import typer

NAME = "resume"


def command(ctx: typer.Context, container_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    from runv.sandbox.lifecycle import resume

    resume(ctx.obj, container_id)

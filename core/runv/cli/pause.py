"""Pause every process of the container (its VM's vCPUs stop)."""

from typing import Annotated

import typer

NAME = "pause"


def command(ctx: typer.Context, container_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    from runv.sandbox.lifecycle import pause

    pause(ctx.obj, container_id)

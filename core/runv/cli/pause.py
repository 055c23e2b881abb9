"""Pause every process of the container (its VM's vCPUs stop)."""

import typer

from runv.cli.options import ContainerId

NAME = "pause"


def command(ctx: typer.Context, container_id: ContainerId) -> None:
    from runv.runtime.verbs import pause

    pause(ctx.obj, container_id)

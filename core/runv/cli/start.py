"""Start the process of a created container."""

import typer

from runv.cli.options import ContainerId

NAME = "start"


def command(ctx: typer.Context, container_id: ContainerId) -> None:
    from runv.runtime.verbs import start

    start(ctx.obj, container_id)

"""Resume a paused container."""

import typer

from runv.cli.options import ContainerId

NAME = "resume"


def command(ctx: typer.Context, container_id: ContainerId) -> None:
    from runv.runtime.verbs import resume

    resume(ctx.obj, container_id)

"""Delete a stopped container (any container with --force) and everything it held."""

from typing import Annotated

import typer

from runv.cli.options import ContainerId

NAME = "delete"


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    force: Annotated[bool, typer.Option("--force", "-f", help="Kill the container first if it is running.")] = False,
) -> None:
    from runv.runtime.verbs import delete

    delete(ctx.obj, container_id, force)

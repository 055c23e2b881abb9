"""Delete a stopped container (any container with --force) and everything it held."""

from runv.settings import Settings

NAME = "delete"


def run(settings: Settings, container_id: str, force: bool) -> None:
    from runv.verbs.lifecycle import delete

    delete(settings, container_id, force)


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from typing import Annotated

    import typer

    from runv.cli.options import ContainerId

    def command(
        ctx: typer.Context,
        container_id: ContainerId,
        force: Annotated[bool, typer.Option("--force", "-f", help="Kill the container first if it is running.")] = False,
    ) -> None:
        run(ctx.obj, container_id, force)

    return command

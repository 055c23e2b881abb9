"""Send a signal (default TERM) to the container's process."""

from runv.settings import Settings

NAME = "kill"


def run(settings: Settings, container_id: str, signal: str, all_processes: bool) -> None:
    from runv.verbs.lifecycle import kill, parse_signal

    kill(settings, container_id, parse_signal(signal), all_processes)


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from typing import Annotated

    import typer

    from runv.cli.options import ContainerId

    def command(
        ctx: typer.Context,
        container_id: ContainerId,
        signal: Annotated[str, typer.Argument(metavar="[SIGNAL]", help="Number, TERM or SIGTERM.")] = "TERM",
        all_processes: Annotated[bool, typer.Option("--all", "-a", help="Signal every process of the container.")] = False,
    ) -> None:
        run(ctx.obj, container_id, signal, all_processes)

    return command

"""Start the process of a created container."""

from runv.settings import Settings

NAME = "start"


def run(settings: Settings, container_id: str) -> None:
    from runv.verbs.lifecycle import start

    start(settings, container_id)


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from runv.cli.options import container_command

    return container_command(run)

"""Resume a paused container."""

from runv.settings import Settings

NAME = "resume"


def run(settings: Settings, container_id: str) -> None:
    from runv.verbs.lifecycle import resume

    resume(settings, container_id)


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from runv.cli.options import container_command

    return container_command(run)

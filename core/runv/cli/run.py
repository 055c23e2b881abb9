"""Create and start a container; in the foreground, exit with its exit code."""

from runv.settings import Settings

NAME = "run"


def run(settings: Settings, container_id: str, bundle, detach: bool, pid_file, console_socket, no_pivot: bool,
        no_new_keyring: bool, preserve_fds: int) -> int:
    """Returns the container's exit code (0 once started, with ``detach``)."""
    from pathlib import Path

    from runv.verbs import lifecycle as verbs

    return verbs.run(settings, container_id, Path(bundle), pid_file, detach, console_socket)


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from typing import Annotated

    import typer

    from runv.cli.options import Bundle, ConsoleSocket, ContainerId, NoNewKeyring, NoPivot, PidFile, PreserveFds

    def command(
        ctx: typer.Context,
        container_id: ContainerId,
        bundle: Bundle = ".",
        detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the container is started.")] = False,
        pid_file: PidFile = None,
        console_socket: ConsoleSocket = None,
        no_pivot: NoPivot = False,
        no_new_keyring: NoNewKeyring = False,
        preserve_fds: PreserveFds = 0,
    ) -> None:
        raise typer.Exit(run(ctx.obj, container_id, bundle, detach, pid_file, console_socket, no_pivot, no_new_keyring,
                             preserve_fds))

    return command

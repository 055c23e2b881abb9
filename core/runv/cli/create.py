"""Create a container: boot its VM and hold the process ready for `runv start`."""

from runv.settings import Settings

NAME = "create"


def run(settings: Settings, container_id: str, bundle, pid_file, console_socket, no_pivot: bool, no_new_keyring: bool,
        preserve_fds: int) -> None:
    """``bundle`` as given (``.`` by default); the paths are typer's Paths or None."""
    from pathlib import Path

    from runv.verbs.lifecycle import create

    create(settings, container_id, Path(bundle), pid_file, console_socket)


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    import typer

    from runv.cli.options import Bundle, ConsoleSocket, ContainerId, NoNewKeyring, NoPivot, PidFile, PreserveFds

    def command(
        ctx: typer.Context,
        container_id: ContainerId,
        bundle: Bundle = ".",
        pid_file: PidFile = None,
        console_socket: ConsoleSocket = None,
        no_pivot: NoPivot = False,
        no_new_keyring: NoNewKeyring = False,
        preserve_fds: PreserveFds = 0,
    ) -> None:
        run(ctx.obj, container_id, bundle, pid_file, console_socket, no_pivot, no_new_keyring, preserve_fds)

    return command

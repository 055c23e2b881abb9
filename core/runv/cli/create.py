"""Create a container: boot its VM and hold the process ready for `runv start`."""

from pathlib import Path

import typer

from runv.cli.options import Bundle, ConsoleSocket, ContainerId, NoNewKeyring, NoPivot, PidFile, PreserveFds

NAME = "create"


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    bundle: Bundle = Path("."),
    pid_file: PidFile = None,
    console_socket: ConsoleSocket = None,
    no_pivot: NoPivot = False,
    no_new_keyring: NoNewKeyring = False,
    preserve_fds: PreserveFds = 0,
) -> None:
    from runv.runtime.verbs import create

    create(ctx.obj, container_id, bundle, pid_file, console_socket)

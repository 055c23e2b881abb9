"""Run a new process inside a running container."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from runv.cli.options import ConsoleSocket, ContainerId, PidFile, PreserveFds

NAME = "exec"
CONTEXT_SETTINGS = {"allow_interspersed_args": False}  # `exec ID sh -c ...`: -c is the program's


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    args: Annotated[Optional[list[str]], typer.Argument(metavar="[COMMAND [ARG...]]")] = None,
    process: Annotated[Optional[Path], typer.Option("--process", "-p", help="process.json describing the process.")] = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", "-e", help="K=V added to the container's environment.")] = None,
    cwd: Annotated[Optional[str], typer.Option("--cwd", help="Working directory in the container.")] = None,
    user: Annotated[Optional[str], typer.Option("--user", "-u", help="UID[:GID].")] = None,
    additional_gids: Annotated[Optional[list[int]], typer.Option("--additional-gids", "-g", help="Extra group ids.")] = None,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Allocate a pseudo-terminal.")] = False,
    console_socket: ConsoleSocket = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the process has started.")] = False,
    pid_file: PidFile = None,
    process_label: Annotated[Optional[str], typer.Option("--process-label", hidden=True)] = None,
    apparmor: Annotated[Optional[str], typer.Option("--apparmor", hidden=True)] = None,
    no_new_privs: Annotated[bool, typer.Option("--no-new-privs", hidden=True)] = False,
    cap: Annotated[Optional[list[str]], typer.Option("--cap", "-c", hidden=True)] = None,
    preserve_fds: PreserveFds = 0,
) -> None:
    from runv.runtime.execclient import exec_process, make_process

    spec_process = make_process(
        ctx.obj, container_id, process_file=process, args=args or [], env=env or [], cwd=cwd, user=user,
        additional_gids=additional_gids or [], tty=tty, caps=cap or [], no_new_privs=no_new_privs,
    )
    code = exec_process(ctx.obj, container_id, spec_process, detach=detach, pid_file=pid_file, console_socket=console_socket)
    raise typer.Exit(code)

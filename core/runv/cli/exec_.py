"""Run a new process inside a running container."""

from runv.settings import Settings

TYPE_CHECKING = False  # `runv exec ID ARGS` imports no pathlib (its paths come as Paths only when given)
if TYPE_CHECKING:
    from pathlib import Path

NAME = "exec"
CONTEXT_SETTINGS = {"allow_interspersed_args": False}  # `exec ID sh -c ...`: -c is the program's


def run(settings: Settings, container_id: str, args: list[str] | None, process: "Path | None", env: list[str] | None,
        cwd: str | None, user: str | None, additional_gids: list[int] | None, tty: bool, console_socket: "Path | None",
        detach: bool, pid_file: "Path | None", process_label: str | None, apparmor: str | None, no_new_privs: bool,
        cap: list[str] | None, preserve_fds: int) -> int:
    """Returns the process's exit status (0 once it started, with ``detach``)."""
    from runv.verbs.exec import exec_process, exec_request

    request = exec_request(
        process_file=process, args=args or [], env=env or [], cwd=cwd, user=user,
        additional_gids=additional_gids or [], tty=tty, caps=cap or [], no_new_privs=no_new_privs,
    )
    return exec_process(settings, container_id, request, detach=detach, pid_file=pid_file, console_socket=console_socket)


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from pathlib import Path
    from typing import Annotated, Optional

    import typer

    from runv.cli.options import ConsoleSocket, ContainerId, PidFile, PreserveFds

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
        raise typer.Exit(run(ctx.obj, container_id, args, process, env, cwd, user, additional_gids, tty, console_socket,
                             detach, pid_file, process_label, apparmor, no_new_privs, cap, preserve_fds))

    return command

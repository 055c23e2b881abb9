"""List the processes running in the container: as the guest sees them, or (json) its host PIDs."""

from runv.settings import Settings

NAME = "ps"


def run(settings: Settings, container_id: str, output_format: str) -> None:
    import json

    from runv.api.errors import RunvError
    from runv.verbs.lifecycle import ask_shim

    if output_format not in ("table", "json"):
        raise RunvError(f"invalid format {output_format!r}: use table or json")
    if output_format == "json":  # for clients that look the PIDs up on the host
        from runv.verbs.lifecycle import host_pids

        print(json.dumps(host_pids(settings, container_id)))
        return
    processes = ask_shim(settings, container_id, "ps")["processes"]
    print("PID   CMD")
    for p in processes:
        print(f"{p['pid']:<5} {p['cmd']}")


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from typing import Annotated

    import typer

    from runv.cli.options import ContainerId

    def command(
        ctx: typer.Context,
        container_id: ContainerId,
        output_format: Annotated[str, typer.Option("--format", "-f", help="table (the guest's processes) or json (host PIDs: shim, VMM).")] = "table",
    ) -> None:
        run(ctx.obj, container_id, output_format)

    return command

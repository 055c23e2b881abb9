"""List the processes running in the container (as the guest sees them)."""

from runv.settings import Settings

NAME = "ps"


def run(settings: Settings, container_id: str, output_format: str) -> None:
    import json

    from runv.api.errors import RunvError
    from runv.runtime.verbs import ask_shim

    if output_format not in ("table", "json"):
        raise RunvError(f"invalid format {output_format!r}: use table or json")
    processes = ask_shim(settings, container_id, "ps")["processes"]
    if output_format == "json":
        print(json.dumps([p["pid"] for p in processes]))
        return
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
        output_format: Annotated[str, typer.Option("--format", "-f", help="table or json (a list of PIDs).")] = "table",
    ) -> None:
        run(ctx.obj, container_id, output_format)

    return command

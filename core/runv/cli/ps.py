"""List the processes running in the container (as the guest sees them)."""

from typing import Annotated

import typer

from runv.cli.options import ContainerId

NAME = "ps"


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    output_format: Annotated[str, typer.Option("--format", "-f", help="table or json (a list of PIDs).")] = "table",
) -> None:
    import json

    from runv.api.errors import RunvError
    from runv.runtime.verbs import ask_shim

    if output_format not in ("table", "json"):
        raise RunvError(f"invalid format {output_format!r}: use table or json")
    processes = ask_shim(ctx.obj, container_id, "ps")["processes"]
    if output_format == "json":
        print(json.dumps([p["pid"] for p in processes]))
        return
    print("PID   CMD")
    for p in processes:
        print(f"{p['pid']:<5} {p['cmd']}")

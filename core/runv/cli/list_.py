"""List containers under --root."""

from runv.settings import Settings

NAME = "list"


def run(settings: Settings, output_format: str, quiet: bool) -> None:
    import json

    from runv.api.errors import RunvError
    from runv.records import Store

    if output_format not in ("table", "json"):
        raise RunvError(f"invalid format {output_format!r}: use table or json")
    store = Store(settings.root)
    states = []
    for cid in store.ids():
        try:
            states.append(store.read(cid).oci_state().to_json())
        except RunvError:
            continue  # deleted while we listed
    if quiet:
        for state in states:  # none: nothing at all, as runc prints
            print(state["id"])
    elif output_format == "json":
        print(json.dumps(states))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"]) for s in states]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from typing import Annotated

    import typer

    def command(
        ctx: typer.Context,
        output_format: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print ids only.")] = False,
    ) -> None:
        run(ctx.obj, output_format, quiet)

    return command

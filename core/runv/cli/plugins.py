"""List installed plugins: kind, distribution, version, hooks, disabled state, load errors."""

from typing import Annotated

import typer

NAME = "plugins"


def describe() -> list[dict]:
    """Every installed plugin as a dict; enabled ones are loaded to list their hooks (and a
    hypervisor's priority and capabilities), and one that fails to load is reported with its
    error instead of breaking the listing."""
    from runv.api.frozen import to_json
    from runv.loader import LoadError, disabled, hooks_of, installed, load_hypervisor

    off = disabled()
    rows = []
    for info in installed():
        row = {"name": info.name, "kind": info.kind, "distribution": info.distribution, "version": info.version,
               "module": info.value, "disabled": off.get(info.name), "hooks": [], "priority": None,
               "capabilities": None, "templates": None, "error": None}
        if row["disabled"] is None:
            try:
                row["hooks"] = hooks_of(info).implemented(info.name)
                if info.kind == "hypervisor":
                    declared = load_hypervisor(info.name).info
                    row["priority"] = declared.priority
                    row["capabilities"] = to_json(declared.capabilities)
                    row["templates"] = declared.templates is not None
            except LoadError as exc:
                row["error"] = exc.reason
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    table = [("KIND", "NAME", "DISTRIBUTION", "VERSION", "STATE", "HOOKS")]
    for row in rows:
        if row["disabled"]:
            state = f"disabled by {row['disabled']}"
        elif row["error"]:
            state = "broken"
        else:
            state = "enabled" + (f" (priority {row['priority']})" if row["priority"] is not None else "")
        table.append((row["kind"], row["name"], row["distribution"], row["version"], state, ",".join(row["hooks"]) or "-"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    lines += [f"{row['kind']} plugin {row['name']!r} failed to load: {row['error']}" for row in rows if row["error"]]
    return "\n".join(lines)


def command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    import json

    rows = describe()
    print(json.dumps(rows, indent=2) if as_json else render(rows))

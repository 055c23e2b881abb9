"""Make, list and remove VM templates (booted guests that containers start from)."""

import json
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="VM templates: a guest booted once and saved; `create`/`run` start from a matching one (--template).",
    no_args_is_help=True,
)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="Template name (default: from hypervisor, memory, vCPUs and a hash of the shape).")] = None,
    memory: Annotated[Optional[int], typer.Option("--memory", "-m", help="Guest memory in MiB (default: [vm] memory_mib, 256).")] = None,
    vcpus: Annotated[Optional[int], typer.Option("--vcpus", help="Guest vCPUs (default: [vm] vcpus, 1).")] = None,
    hotplug_slots: Annotated[int, typer.Option("--hotplug-slots", help="Free PCIe slots the containers' VMs keep (the net plugin keeps 2).")] = 2,
    clones: Annotated[str, typer.Option("--clones", help=(
        "private: each clone loads its own RAM, no page shared between clones (tenants); "
        "shared: clones map the template's RAM copy-on-write (density)."))] = "private",
) -> None:
    """Boot a VM of this shape to agent-ready and save it (replaces a template of the same name)."""
    from runv.api.errors import RunvError
    from runv.templates import make, store

    if clones not in ("private", "shared"):
        raise RunvError(f"--clones must be private or shared, not {clones!r}")
    record = make.create(
        ctx.find_root().obj,
        name=name,
        memory_mib=memory,
        vcpus=vcpus,
        hotplug_slots=hotplug_slots,
        private=clones == "private",
    )
    size = sum(record["saved"]["files"].values())
    typer.echo(f"{record['name']}: saved in {record['seconds']:.1f} s ({size / 2**20:.0f} MiB) in {store.directory()}")


@app.command("list")
def list_(
    ctx: typer.Context,
    format: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """Templates with their shape, and whether the current kernel and initrd still match."""
    from runv.templates import make, match, store

    settings = ctx.find_root().obj
    try:
        current = match.source(settings.kernel, settings.initrd)
    except OSError:
        current = None
    rows = []
    for record in store.all_records():
        path = store.directory() / record["name"]
        problem = match.broken_reason(path, record) or (
            match.stale_reason(record, current) if current else "no guest kernel/initrd to compare with"
        )
        shape = record.get("shape", {})
        rows.append({
            "name": record["name"],
            "hypervisor": shape.get("hypervisor"),
            "memory_mib": shape.get("memory_mib"),
            "vcpus": shape.get("vcpus"),
            "clones": make.clones(record),
            "bytes": sum(record["saved"].get("files", {}).values()),
            "created": record.get("created"),
            "status": f"unusable: {problem}" if problem else "ok",
        })
    if format == "json":
        typer.echo(json.dumps(rows, indent=1))
        return
    typer.echo(f"{'NAME':<32} {'HYPERVISOR':<10} {'MEMORY':>6} {'VCPUS':>5} {'CLONES':<7} {'SIZE':>8}  STATUS")
    for row in rows:
        typer.echo(
            f"{row['name']:<32} {row['hypervisor']:<10} {row['memory_mib']:>5}M {row['vcpus']:>5} "
            f"{row['clones']:<7} {row['bytes'] / 2**20:>7.0f}M  {row['status']}"
        )


@app.command("rm")
def rm(names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Templates to remove.")]) -> None:
    """Remove templates."""
    from runv.templates import store

    for name in names:
        store.remove(name)

"""Update the resource limits of a running container (runc's flags, or -r resources.json)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from runv.cli.options import ContainerId

NAME = "update"

Value = Optional[str]


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    resources: Annotated[Optional[Path], typer.Option("--resources", "-r", help=(
        "File holding the linux.resources fields to change, or - for standard input; the other options are then ignored."))] = None,
    blkio_weight: Annotated[Value, typer.Option("--blkio-weight", help="Block I/O weight, 10 to 1000.")] = None,
    cpu_period: Annotated[Value, typer.Option("--cpu-period", help="CPU CFS period (µs).")] = None,
    cpu_quota: Annotated[Value, typer.Option("--cpu-quota", help="CPU CFS quota (µs per period).")] = None,
    cpu_share: Annotated[Value, typer.Option("--cpu-share", help="CPU shares (relative weight).")] = None,
    cpu_rt_period: Annotated[Value, typer.Option("--cpu-rt-period", help="Real-time period (µs; not applied under cgroup v2).")] = None,
    cpu_rt_runtime: Annotated[Value, typer.Option("--cpu-rt-runtime", help="Real-time runtime (µs; not applied under cgroup v2).")] = None,
    cpuset_cpus: Annotated[Value, typer.Option("--cpuset-cpus", help="CPUs of the VM to use, such as 0-1.")] = None,
    cpuset_mems: Annotated[Value, typer.Option("--cpuset-mems", help="Memory nodes to use.")] = None,
    memory: Annotated[Value, typer.Option("--memory", help="Memory limit (bytes, or 512m).")] = None,
    memory_reservation: Annotated[Value, typer.Option("--memory-reservation", help="Memory soft limit (bytes, or 256m).")] = None,
    memory_swap: Annotated[Value, typer.Option("--memory-swap", help="Memory plus swap limit; -1 unlimited.")] = None,
    pids_limit: Annotated[Value, typer.Option("--pids-limit", help="Maximum number of processes.")] = None,
    l3_cache_schema: Annotated[Value, typer.Option("--l3-cache-schema", hidden=True)] = None,
    mem_bw_schema: Annotated[Value, typer.Option("--mem-bw-schema", hidden=True)] = None,
) -> None:
    import json
    import sys

    from runv.api.errors import RunvError
    from runv.oci.resources import UPDATE_FLAGS, from_update_flags
    from runv.verbs.lifecycle import ask_shim

    if l3_cache_schema is not None or mem_bw_schema is not None:
        raise RunvError("Intel RDT (--l3-cache-schema, --mem-bw-schema) is not available to a container in a VM")
    if resources is not None:
        try:
            text = sys.stdin.read() if str(resources) == "-" else resources.read_text()
            update = json.loads(text)
        except OSError as exc:
            raise RunvError(f"cannot read {resources}: {exc.strerror}") from None
        except ValueError as exc:
            raise RunvError(f"{resources}: not JSON: {exc}") from None
    else:  # each flag's parameter is its name with dashes as underscores
        flags = {name: ctx.params[name.replace("-", "_")] for name in UPDATE_FLAGS}
        update = from_update_flags({flag: value for flag, value in flags.items() if value is not None})
    ask_shim(ctx.obj, container_id, "update", resources=update)

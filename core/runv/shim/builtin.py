"""Default hook implementations the core registers before any plugin (``trylast``)."""

from runv.api import hookimpl


@hookimpl(trylast=True)
def exec(container, process, agent, name, streams):
    """Starts the process through the guest agent; returns its guest PID."""
    # the container's process creates its namespaces; every other one joins them
    request = {**process.agent_request(), "init": name == "init"}
    return agent.call("exec", proc=name, streams=streams, **request)["pid"]

"""Default hook implementations the core registers before any plugin (``trylast``)."""

from runv.api import hookimpl


@hookimpl(trylast=True)
def exec(container, process, agent, name, streams):
    """Starts the process through the guest agent; returns its guest PID."""
    # the container's process ("init"; a pod member's "init:N") creates its namespaces (and
    # runs the startContainer hooks in them); every other one joins them. "container" says
    # whose rootfs and namespaces: a pod's VM holds several containers
    init = name.partition(":")[0] == "init"
    request = {**process.agent_request(), "init": init, "container": container.id}
    hooks = container.spec.hooks.get("startContainer") if container.spec else ()
    if init and hooks:
        request["startContainer"] = [{"path": h.path, "args": list(h.args), "env": list(h.env), "timeout": h.timeout}
                                     for h in hooks]
        request["state"] = {"ociVersion": container.spec.oci_version, "id": container.id, "status": "created",
                            "bundle": str(container.bundle), "annotations": container.annotations}
    return agent.call("exec", proc=name, streams=streams, **request)["pid"]

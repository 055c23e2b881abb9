"""OCI lifecycle hooks, run on the host with the container's state on stdin.

For a VM runtime every hook runs on the host: ``createRuntime``, ``createContainer``
and ``prestart`` once the VM is up and the rootfs mounted in the guest (a failure fails
``create`` and tears the VM down), ``poststart`` after the process started (a failure is
logged), ``poststop`` when the container is deleted (a failure is logged).
``startContainer`` hooks run inside the container, in the guest (runv.agent.confine).
"""

from __future__ import annotations

import json
import subprocess

from runv.api.errors import RunvError
from runv.api.spec import Hook, Spec
from runv.log import logger
from runv.oci.state import State
from runv.vm import mountns

DEFAULT_TIMEOUT = 30  # seconds, when the hook gives none


def run_hooks(spec: Spec | None, kind: str, state: State, *, fatal: bool) -> None:
    """Runs every ``kind`` hook in order; the first failure raises (``fatal``) or is logged."""
    if spec is None:
        return
    document = json.dumps(state.to_json()).encode()
    for index, hook in enumerate(spec.hooks.get(kind, ())):
        problem = _run(hook, document)
        if problem is None:
            continue
        message = f"{kind} hook #{index} ({hook.path}) {problem}"
        if fatal:
            raise RunvError(message)
        logger.warning("%s", message)


def _run(hook: Hook, state: bytes) -> str | None:
    """Why the hook failed, or None."""
    timeout = hook.timeout or DEFAULT_TIMEOUT
    try:
        result = subprocess.run(
            list(hook.args) or [hook.path],
            executable=hook.path,
            input=state,
            env=dict(item.split("=", 1) for item in hook.env if "=" in item),
            capture_output=True,
            timeout=timeout,
            preexec_fn=mountns.back,  # in the runtime's mount namespace, as runc's (not the shim's own)
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    except OSError as exc:
        return f"could not run: {exc.strerror}"
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        return f"failed with exit status {result.returncode}" + (f": {detail[-1]}" if detail else "")
    return None

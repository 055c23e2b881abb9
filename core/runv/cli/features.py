"""Print what this runtime supports, as runc's `features` JSON."""

import typer

NAME = "features"


def command(ctx: typer.Context) -> None:
    import json

    from runv.oci.config import HOOK_KINDS
    from runv.oci.state import OCI_VERSION

    print(
        json.dumps(
            {
                "ociVersionMin": "1.0.0",
                "ociVersionMax": OCI_VERSION,
                "hooks": [kind for kind in HOOK_KINDS if kind != "startContainer"],
                "mountOptions": ["ro", "rw", "bind", "rbind"],
                # The VM is the isolation boundary: namespaces, capabilities, cgroups,
                # seccomp and LSMs of the spec are not applied inside the guest.
                "linux": {
                    "namespaces": [],
                    "capabilities": [],
                    "cgroup": {"v1": False, "v2": False, "systemd": False, "systemdUser": False},
                    "seccomp": {"enabled": False},
                    "apparmor": {"enabled": False},
                    "selinux": {"enabled": False},
                },
                "annotations": {"io.github.runv.isolation": "virtual-machine"},
            },
            indent=2,
        )
    )

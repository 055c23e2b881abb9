"""Print what this runtime supports, as runc's `features` JSON: what the guest agent really applies."""

import typer

NAME = "features"


def shared_fs(settings) -> str | None:
    """The filesystem the default hypervisor's VMs get their shares (the rootfs, volumes)
    over: virtiofs, or 9p where there is no virtiofsd; None when no hypervisor can run."""
    from runv.api.errors import RunvError
    from runv.loader import choose_hypervisor

    try:
        served = choose_hypervisor(settings.hypervisor).info.capabilities.shared_fs
    except RunvError:
        return None
    return served.fstype if served else None


def command(ctx: typer.Context) -> None:
    import json

    from runv.agent.tables import CAPABILITIES
    from runv.api.spec import HOOK_KINDS
    from runv.oci.seccomp import ACTIONS, ARCHES, OPERATORS
    from runv.oci.state import OCI_VERSION

    print(
        json.dumps(
            {
                "ociVersionMin": "1.0.0",
                "ociVersionMax": OCI_VERSION,
                "hooks": list(HOOK_KINDS),  # startContainer in the guest, the others on the host
                "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
                                 "sync", "async", "dirsync", "noatime", "atime", "nodiratime", "diratime",
                                 "relatime", "norelatime", "strictatime"],
                # Applied inside the guest (docs/confinement.md): every container gets its own mount,
                # PID, UTS, IPC and cgroup namespaces; the network is the VM's (a "network" entry is
                # the host namespace whose interfaces the VM takes over); a user namespace with the
                # spec's mappings where "user" is listed; seccomp compiled by the host's libseccomp, loaded in the
                # guest; no LSM exists in the guest (apparmorProfile, selinuxLabel are accepted, not applied).
                "linux": {
                    "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
                    "capabilities": list(CAPABILITIES),
                    "cgroup": {"v1": False, "v2": True, "systemd": False, "systemdUser": False},
                    "seccomp": {"enabled": True, "actions": sorted(ACTIONS), "operators": sorted(OPERATORS),
                                "archs": sorted(ARCHES)},
                    "apparmor": {"enabled": False},
                    "selinux": {"enabled": False},
                },
                "annotations": {"io.github.runv.isolation": "virtual-machine",
                                **({"io.github.runv.shared-fs": fs} if (fs := shared_fs(ctx.obj)) else {})},
            },
            indent=2,
        )
    )

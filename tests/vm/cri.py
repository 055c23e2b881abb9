"""A small client of the Kubernetes Container Runtime Interface (``runtime.v1``, which
containerd 1.6's CRI plugin serves) for the tests: the kubelet's side of a pod's life.

The messages are built at import from the table below (names and field numbers as in
k8s.io/cri-api's ``api.proto``; a message may list only the fields the tests use, since
protobuf skips fields it does not know); enums are sent as their numbers. A call takes its
request as keyword arguments of plain values (dicts for messages, snake_case names) and
returns the response message."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

PACKAGE = "runtime.v1"
POD, CONTAINER, NODE = 0, 1, 2  # NamespaceMode
CONTAINER_RUNNING, CONTAINER_EXITED = 1, 2  # ContainerState

# message: ((field, number, type), ...); a type is a scalar, a message of this table,
# "map" (map<string, string>) or "repeated <type>"
MESSAGES = {
    "VersionRequest": (("version", 1, "string"),),
    "VersionResponse": (("version", 1, "string"), ("runtime_name", 2, "string"), ("runtime_version", 3, "string"),
                        ("runtime_api_version", 4, "string")),
    "KeyValue": (("key", 1, "string"), ("value", 2, "string")),
    "ImageSpec": (("image", 1, "string"),),
    "PodSandboxMetadata": (("name", 1, "string"), ("uid", 2, "string"), ("namespace", 3, "string"), ("attempt", 4, "uint32")),
    "NamespaceOption": (("network", 1, "int32"), ("pid", 2, "int32"), ("ipc", 3, "int32")),
    "LinuxSandboxSecurityContext": (("namespace_options", 1, "NamespaceOption"),),
    "LinuxContainerResources": (("cpu_period", 1, "int64"), ("cpu_quota", 2, "int64"), ("cpu_shares", 3, "int64"),
                                ("memory_limit_in_bytes", 4, "int64")),
    "LinuxPodSandboxConfig": (("cgroup_parent", 1, "string"), ("security_context", 2, "LinuxSandboxSecurityContext")),
    "PodSandboxConfig": (("metadata", 1, "PodSandboxMetadata"), ("hostname", 2, "string"), ("log_directory", 3, "string"),
                         ("labels", 6, "map"), ("annotations", 7, "map"), ("linux", 8, "LinuxPodSandboxConfig")),
    "RunPodSandboxRequest": (("config", 1, "PodSandboxConfig"), ("runtime_handler", 2, "string")),
    "RunPodSandboxResponse": (("pod_sandbox_id", 1, "string"),),
    "StopPodSandboxRequest": (("pod_sandbox_id", 1, "string"),),
    "StopPodSandboxResponse": (),
    "RemovePodSandboxRequest": (("pod_sandbox_id", 1, "string"),),
    "RemovePodSandboxResponse": (),
    "PodSandboxStatusRequest": (("pod_sandbox_id", 1, "string"), ("verbose", 2, "bool")),
    "PodSandboxNetworkStatus": (("ip", 1, "string"),),
    "PodSandboxStatus": (("id", 1, "string"), ("state", 3, "int32"), ("network", 5, "PodSandboxNetworkStatus")),
    "PodSandboxStatusResponse": (("status", 1, "PodSandboxStatus"), ("info", 2, "map")),
    "ContainerMetadata": (("name", 1, "string"), ("attempt", 2, "uint32")),
    "LinuxContainerConfig": (("resources", 1, "LinuxContainerResources"),),
    "ContainerConfig": (("metadata", 1, "ContainerMetadata"), ("image", 2, "ImageSpec"), ("command", 3, "repeated string"),
                        ("args", 4, "repeated string"), ("working_dir", 5, "string"), ("envs", 6, "repeated KeyValue"),
                        ("labels", 9, "map"), ("annotations", 10, "map"), ("log_path", 11, "string"),
                        ("linux", 15, "LinuxContainerConfig")),
    "CreateContainerRequest": (("pod_sandbox_id", 1, "string"), ("config", 2, "ContainerConfig"),
                               ("sandbox_config", 3, "PodSandboxConfig")),
    "CreateContainerResponse": (("container_id", 1, "string"),),
    "StartContainerRequest": (("container_id", 1, "string"),),
    "StartContainerResponse": (),
    "StopContainerRequest": (("container_id", 1, "string"), ("timeout", 2, "int64")),
    "StopContainerResponse": (),
    "RemoveContainerRequest": (("container_id", 1, "string"),),
    "RemoveContainerResponse": (),
    "ContainerStatusRequest": (("container_id", 1, "string"), ("verbose", 2, "bool")),
    "ContainerStatus": (("id", 1, "string"), ("state", 3, "int32"), ("exit_code", 7, "int32"), ("reason", 10, "string"),
                        ("log_path", 15, "string")),
    "ContainerStatusResponse": (("status", 1, "ContainerStatus"), ("info", 2, "map")),
    "ExecSyncRequest": (("container_id", 1, "string"), ("cmd", 2, "repeated string"), ("timeout", 3, "int64")),
    "ExecSyncResponse": (("stdout", 1, "bytes"), ("stderr", 2, "bytes"), ("exit_code", 3, "int32")),
}
F = descriptor_pb2.FieldDescriptorProto
SCALARS = {"string": F.TYPE_STRING, "bytes": F.TYPE_BYTES, "bool": F.TYPE_BOOL, "int32": F.TYPE_INT32,
           "uint32": F.TYPE_UINT32, "int64": F.TYPE_INT64}


def _build() -> dict:
    """The message classes of :data:`MESSAGES`, by name."""
    file = descriptor_pb2.FileDescriptorProto(name="runv_tests_cri.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            label = F.LABEL_OPTIONAL
            if kind.startswith("repeated "):
                label, kind = F.LABEL_REPEATED, kind.removeprefix("repeated ")
            field = message.field.add(name=field_name, number=number, label=label)
            if kind == "map":  # a repeated nested Entry message, as protoc writes a map
                entry = message.nested_type.add(name="".join(p.title() for p in field_name.split("_")) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
                entry.field.add(name="value", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
                field.label, field.type, field.type_name = F.LABEL_REPEATED, F.TYPE_MESSAGE, f".{PACKAGE}.{name}.{entry.name}"
            elif kind in SCALARS:
                field.type = SCALARS[kind]
            else:
                field.type, field.type_name = F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES}


CLASSES = _build()


class RuntimeService:
    """``runtime.v1.RuntimeService`` at a CRI socket: ``cri.RunPodSandbox(config=…)``."""

    def __init__(self, socket: Path, timeout: float = 180) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.timeout = timeout

    def __getattr__(self, method: str):
        if f"{method}Request" not in CLASSES:
            raise AttributeError(method)
        request_class, response_class = CLASSES[f"{method}Request"], CLASSES[f"{method}Response"]
        stub = self.channel.unary_unary(f"/{PACKAGE}.RuntimeService/{method}", request_serializer=request_class.SerializeToString,
                                        response_deserializer=response_class.FromString)

        def call(**fields):
            return stub(json_format.ParseDict(fields, request_class()), timeout=self.timeout)

        return call

    def close(self) -> None:
        self.channel.close()

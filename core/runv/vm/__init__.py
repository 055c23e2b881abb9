"""A container's VM, below the shim, the templates and the CLI verbs: its VMSpec and bring-up
(``bringup``), the host end of the agent channel (``agentclient``), the pod directory
(``podshare``) and the pod a container joins (``pods``), the spec's volumes (``volumes``,
``mountpoints``), its size (``sizing``, ``limits``), the host processes around it (``spawn``,
``proctree``), OCI hooks on the host (``ocihooks``) and the one teardown (``teardown``). It
knows nothing of the CLI or of a container's shim."""

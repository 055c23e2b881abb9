"""The runc verbs as plain functions the CLI calls (``verbs``), and what they need: the exec
client (``execclient``), the shim's forking (``spawn``), OCI hooks run on the host
(``ocihooks``) and the missing-program check runc's create makes (``lookpath``)."""

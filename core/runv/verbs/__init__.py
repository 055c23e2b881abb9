"""The runc verbs as plain functions the CLI calls: the lifecycle (``lifecycle``: create, start,
kill, delete, run, pause, resume), ``runv exec``'s client (``exec``) and the missing-program
check runc's create makes (``lookpath``)."""

"""OCI runtime-spec models: config.json, the state JSON and the `runv spec` template."""

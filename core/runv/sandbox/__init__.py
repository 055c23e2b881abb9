"""VM specs, container state, lifecycle and the per-container shim."""

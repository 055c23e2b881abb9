"""The host/guest agent protocol and the guest agent (stdlib only: it runs in the VM); ``python -m runv.agent`` starts it."""

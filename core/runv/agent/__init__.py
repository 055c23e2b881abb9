"""Host/guest agent protocol, the host-side client and the guest agent (stdlib only)."""

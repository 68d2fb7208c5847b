"""Wire protocol: message schemas and the per-connection state machine."""
